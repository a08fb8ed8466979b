"""A trained policy behind a small, stable-baselines3-like API.

    agent = Agent.load("runs/LunarLander-v3-reinforce-seed1")   # a run directory or a .pt file
    action = agent.predict(obs)                                  # one observation -> int
    actions = agent.predict(batch_of_obs)                        # [B, obs_size] -> int64 array
    returns = agent.evaluate(episodes=100)                       # greedy returns, one per episode

Unlike SB3's ``predict``, which returns ``(actions, state)``, :meth:`Agent.predict` returns the
actions alone: these policies are feed-forward and have no recurrent state.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from pylander import ops
from pylander.checkpoint import CheckpointError, load_checkpoint
from pylander.envs import check_spaces

RUN_FILES = ("best.pt", "checkpoint.pt")
"""What :meth:`Agent.load` looks for in a run directory, in order of preference."""


class PolicyModule(nn.Module):
    """``obs -> logits``: an optional observation transform, then the policy.

    This is the whole computation from raw observations to logits, so it is what
    :mod:`pylander.export` traces. ``obs_transform`` is where an observation normaliser goes.
    """

    def __init__(
        self, policy: nn.Module | Callable[[Tensor], Tensor], obs_transform: nn.Module | None = None
    ):
        super().__init__()
        # A bound method such as ActorCritic.logits: register its module, so that its
        # parameters belong to this one (for .to(), export and state_dict), and call the method.
        owner = getattr(policy, "__self__", None)
        if isinstance(policy, nn.Module):
            self.net, self._method = policy, "forward"
        elif isinstance(owner, nn.Module):
            self.net, self._method = owner, policy.__name__
        else:
            raise TypeError(
                "policy must be an nn.Module or a method of one (e.g. "
                f"ActorCritic.logits), got {type(policy).__name__}"
            )
        self.obs_transform = obs_transform if obs_transform is not None else nn.Identity()

    def forward(self, obs: Tensor) -> Tensor:
        return getattr(self.net, self._method)(self.obs_transform(obs))


class Agent:
    """A trained categorical policy: act on observations, evaluate on its env, export.

    Build one with :meth:`Agent.load` from a checkpoint, or directly from an in-memory policy::

        Agent(policy.logits, "CartPole-v1", obs_size=4, num_actions=2, algo="reinforce")

    ``policy`` maps float observations ``[B, obs_size]`` to logits ``[B, num_actions]`` (log
    probabilities work too); it is an ``nn.Module`` or a method of one, shared (not copied) and
    put in eval mode.
    ``obs_size`` and ``num_actions`` default to the env's. ``obs_transform``, if given, is applied
    to observations before the policy (and is part of every export). ``seed`` seeds the
    generator of stochastic :meth:`predict`.
    """

    def __init__(
        self,
        policy: nn.Module | Callable[[Tensor], Tensor],
        env_id: str,
        *,
        obs_size: int | None = None,
        num_actions: int | None = None,
        algo: str = "unknown",
        obs_transform: nn.Module | None = None,
        checkpoint_path: str | Path | None = None,
        seed: int | None = None,
    ):
        self.policy = PolicyModule(policy, obs_transform).eval()
        if obs_size is None or num_actions is None:
            env = gym.make(env_id)
            try:
                env_obs_size, env_num_actions = check_spaces(env, env_id)
            finally:
                env.close()
            obs_size = env_obs_size if obs_size is None else obs_size
            num_actions = env_num_actions if num_actions is None else num_actions
        self._env_id, self._algo = env_id, algo
        self._obs_size, self._num_actions = int(obs_size), int(num_actions)
        self._checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        first = next(self.policy.parameters(), None)
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None else torch.float32
        self._generator = torch.Generator(device=self.device)
        self.seed(seed)

    # --- construction ------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, *, seed: int | None = None) -> Agent:
        """Load the policy of a checkpoint file, or of a run directory (its ``best.pt``, else its
        ``checkpoint.pt``). Raises :class:`~pylander.checkpoint.CheckpointError` if there is
        none or it is damaged."""
        file = resolve_checkpoint(path)
        payload = load_checkpoint(file)
        policy, env_id = _policy_from_payload(payload)
        arch = payload["architecture"]
        return cls(
            policy,
            env_id,
            obs_size=arch["obs_size"],
            num_actions=arch["num_actions"],
            algo=arch["algo"],
            checkpoint_path=file,
            seed=seed,
        )

    def seed(self, seed: int | None = None) -> None:
        """Reseed stochastic :meth:`predict`; ``None`` draws a fresh, unpredictable seed."""
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(int(seed))

    # --- properties --------------------------------------------------------------------------

    @property
    def env_id(self) -> str:
        return self._env_id

    @property
    def obs_size(self) -> int:
        return self._obs_size

    @property
    def num_actions(self) -> int:
        return self._num_actions

    @property
    def algo(self) -> str:
        """The algorithm that trained the policy (``reinforce``, ``seed``, ...)."""
        return self._algo

    @property
    def checkpoint_path(self) -> Path | None:
        """The checkpoint file it was loaded from; ``None`` for an in-memory policy."""
        return self._checkpoint_path

    def __repr__(self) -> str:
        source = f", checkpoint={str(self._checkpoint_path)!r}" if self._checkpoint_path else ""
        return (
            f"Agent(env_id={self._env_id!r}, algo={self._algo!r}, obs_size={self._obs_size}, "
            f"num_actions={self._num_actions}{source})"
        )

    # --- acting ------------------------------------------------------------------------------

    @torch.no_grad()
    def logits(self, obs: Any) -> Tensor:
        """The policy's logits for a batch ``[B, obs_size]`` (or one observation ``[obs_size]``,
        giving ``[num_actions]``), validated like :meth:`predict`'s input."""
        batch, single = self._as_batch(obs)
        logits = self.policy(batch)
        return logits[0] if single else logits

    @torch.no_grad()
    def predict(self, obs: Any, deterministic: bool = True) -> int | np.ndarray:
        """The action for one observation (a Python ``int``) or for each row of a batch
        ``[B, obs_size]`` (an int64 numpy array of length B).

        ``obs`` is a numpy array, a tensor or a (nested) list of real numbers. Greedy (argmax)
        actions unless ``deterministic=False``, which samples from the policy with this agent's
        seeded generator (see :meth:`seed`). Raises ``ValueError`` for a wrong shape or
        non-finite values.
        """
        batch, single = self._as_batch(obs)
        if batch.shape[0] == 0:
            return np.empty(0, dtype=np.int64)
        logits = self.policy(batch)
        if deterministic:
            actions = logits.argmax(-1)
        else:
            actions = ops.sample_categorical(logits.contiguous(), self._generator)[0]
        actions = actions.cpu().numpy().astype(np.int64, copy=False)
        return int(actions[0]) if single else actions

    def evaluate(
        self, episodes: int = 100, seed: int = 0, deterministic: bool = True, num_envs: int = 16
    ) -> np.ndarray:
        """Play ``episodes`` fresh episodes of :attr:`env_id`; returns their returns (float64,
        length ``episodes``). Episode seeds derive from ``seed`` and differ from training's."""
        from pylander.evaluate import evaluate

        if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes <= 0:
            raise ValueError(f"episodes must be a positive integer, got {episodes!r}")
        return evaluate(
            self.policy,
            self._env_id,
            episodes,
            seed,
            stochastic=not deterministic,
            num_envs=num_envs,
            device=self.device,
        )

    def _as_batch(self, obs: Any) -> tuple[Tensor, bool]:
        """``obs`` as a ``[B, obs_size]`` tensor on the policy's device; and whether it was one."""
        if isinstance(obs, Tensor):
            if obs.is_complex() or obs.dtype == torch.bool:
                raise ValueError(f"obs must hold real numbers, got dtype {obs.dtype}")
            x = obs.detach()
        else:
            try:
                array = np.asarray(obs, order="C")  # torch takes no negative strides
            except (ValueError, TypeError) as exc:  # e.g. a ragged list
                raise ValueError(
                    f"obs must be an array of numbers, got a {type(obs).__name__} "
                    f"numpy cannot convert ({str(exc).split('.')[0]})"
                ) from None
            if array.dtype.kind not in "iuf":
                raise ValueError(f"obs must hold real numbers, got dtype {array.dtype}")
            x = torch.from_numpy(array)
        if x.dim() not in (1, 2) or x.shape[-1] != self._obs_size:
            raise ValueError(
                f"obs must have shape [{self._obs_size}] or [batch, {self._obs_size}]"
                f" for {self._env_id}, got {list(x.shape)}"
            )
        x = x.to(device=self.device, dtype=self.dtype)
        if not torch.isfinite(x).all():
            raise ValueError("obs contains NaN or infinite values")
        single = x.dim() == 1
        return (x.unsqueeze(0) if single else x), single


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file as given, or the preferred checkpoint of a run directory."""
    path = Path(path)
    if not path.is_dir():
        return path  # load_checkpoint says what is wrong with it, if anything
    for name in RUN_FILES:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"run directory {path} holds neither {' nor '.join(RUN_FILES)}")


def _policy_from_payload(payload: dict) -> tuple[nn.Module | Callable[[Tensor], Tensor], str]:
    """The policy of a loaded checkpoint and its env id; the one place that knows how."""
    from pylander.evaluate import policy_from_checkpoint

    return policy_from_checkpoint(payload)


__all__ = ["Agent", "PolicyModule", "resolve_checkpoint"]
