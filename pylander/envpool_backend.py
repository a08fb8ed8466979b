"""envpool's C++ envs behind gymnasium's vector-env interface: ``--env-backend envpool``.

:class:`EnvpoolVectorEnv` is what :class:`~pylander.rollout.RolloutCollector` gets instead of
gymnasium's envs (``SerialVectorEnv``). What it relies on in envpool (1.2.5; ``tests/test_envpool.py`` checks each):

- Autoreset is gymnasium 1.x's NEXT_STEP already: the step after an episode's end ignores its
  action, resets that env and returns its first observation with reward 0 and terminated =
  truncated = False. Time limits (CartPole 500, LunarLander 1000 steps) are reported as
  truncated, not terminated. So steps pass through untranslated.
- Seeds are fixed when a pool is made (env ``i`` from ``seed + i``, as gymnasium's
  ``reset(seed=seed)`` does); envpool's own ``reset(seed=...)`` ignores the seed with a warning.
  The trainer reseeds at every checkpoint for exact resumes, so ``reset(seed=s)`` here makes a
  new pool from ``s`` (about a millisecond). envpool takes int32 seeds and the trainer's are
  uint32, so seeds are taken modulo 2**31 - 1.
- Observations and rewards are float32 (gymnasium's rewards are float64; the rollout stores
  float32 either way); ``info`` holds ``env_id``, ``players`` and ``elapsed_step``.
- envpool's LunarLander declares an observation Box whose low bound is the smallest positive
  float, which its observations leave. The spaces here are therefore gymnasium's own for the id,
  checked against envpool's shapes, so both backends describe the env the same way.

Threads: one per pool by default. A training process alternates between the policy and the envs
(with one torch thread, see ``torch_threads``), so a second env thread would mostly wait or take
a core from another process; scale out with ``--procs``, as with gymnasium's envs.
"""

from __future__ import annotations

import operator
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from pylander.envs import ALIASES

INSTALL_HINT = "env_backend envpool needs envpool: pip install 'pylander[envpool]'"
SEED_MODULUS = 2**31 - 1  # envpool asserts -SEED_MODULUS <= seed < SEED_MODULUS


def check_supported(env_id: str) -> None:
    """Raise ValueError unless envpool is installed and has ``env_id`` (or its new name)."""
    try:
        import envpool
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    env_id = ALIASES.get(env_id, env_id)
    if env_id not in envpool.list_all_envs():
        raise ValueError(f"envpool has no {env_id}; use --env-backend gymnasium")


class EnvpoolVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` envpool envs of ``env_id`` as a gymnasium vector env (NEXT_STEP autoreset).

    ``reset(seed=s)`` starts every env from seed ``s + i`` by making a new pool;
    ``reset()`` continues the current pool's random streams.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, env_id: str, num_envs: int, *, num_threads: int = 1, seed: int = 0):
        check_supported(env_id)
        if num_envs <= 0:
            raise ValueError(f"num_envs must be positive, got {num_envs}")
        if num_threads <= 0:
            raise ValueError(f"num_threads must be positive, got {num_threads}")
        self.env_id, self.num_envs, self.num_threads = env_id, num_envs, num_threads
        reference = gym.make(env_id)
        self.spec = reference.spec
        self.single_observation_space = reference.observation_space
        self.single_action_space = reference.action_space
        reference.close()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._pool = self._make_pool(seed)
        self._check_spaces()

    def _make_pool(self, seed: int) -> Any:
        import envpool

        pool = envpool.make_gymnasium(
            self.env_id,
            num_envs=self.num_envs,
            num_threads=self.num_threads,
            seed=seed % SEED_MODULUS,
        )
        with warnings.catch_warnings():
            # Each pool builds its spaces (cached) from float64 bounds on first use, and
            # gymnasium warns about every Box; build them here, quietly.
            warnings.filterwarnings("ignore", message=".*precision lowered by casting")
            pool.observation_space, pool.action_space  # noqa: B018
        return pool

    def _check_spaces(self) -> None:
        theirs, actions = self._pool.single_observation_space, self._pool.single_action_space
        ours = self.single_observation_space
        if ours.shape != theirs.shape or self.single_action_space != actions:
            self._pool.close()
            raise ValueError(
                f"envpool's {self.env_id} has observations {theirs.shape} and actions "
                f"{actions}, gymnasium's {ours.shape} and "
                f"{self.single_action_space}; use --env-backend gymnasium"
            )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start fresh episodes in every env; with ``seed``, from a new pool seeded with it."""
        if options:
            raise ValueError(f"EnvpoolVectorEnv.reset takes no options, got {options!r}")
        if seed is not None:
            try:
                seed = operator.index(seed)
            except TypeError:
                raise TypeError(
                    f"seed must be an int (env i gets seed + i), got {seed!r}"
                ) from None
            self._pool.close()
            self._pool = self._make_pool(seed)
        return self._pool.reset()

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (an env whose episode ended last step resets instead)."""
        return self._pool.step(np.asarray(actions, dtype=np.int32))  # envpool's action dtype

    def close_extras(self, **kwargs: Any) -> None:
        self._pool.close()
