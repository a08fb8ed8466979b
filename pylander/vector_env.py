"""``--vector sync``: :class:`SerialVectorEnv`, gymnasium's ``SyncVectorEnv`` for the envs pylander
trains (flat Box observations, Discrete actions), with a fraction of its per-step overhead.

``SyncVectorEnv`` handles any space: it iterates the actions through the batched action space,
packs the observations through the observation space and copies them again. For 16
LunarLander envs that came to about a tenth of the envs' own time (``BENCHMARKS.md``), paid on
every step of a rollout. This class steps the same envs the same way, into one preallocated
array: the same seeding (env ``i`` from ``seed + i``), NEXT_STEP autoreset (the step after an
episode's end resets that env and returns reward 0, ``terminated = truncated = False``), dtypes
and infos, so its observations, rewards and flags are ``SyncVectorEnv``'s bit for bit
(``tests/test_vector_env.py``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from pylander.envs import check_spaces


class SerialVectorEnv(gym.vector.VectorEnv):
    """The envs made by ``env_fns``, stepped one after the other in this process."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]]):
        self.envs: list[gym.Env] = []
        try:
            self.envs.extend(fn() for fn in env_fns)
            first = self.envs[0]
            check_spaces(first, first.spec.id if first.spec else type(first.unwrapped).__name__)
            for env in self.envs[1:]:
                if (env.observation_space, env.action_space) != (
                    first.observation_space,
                    first.action_space,
                ):
                    raise ValueError("the envs of a vector env must have the same spaces")
        except BaseException:  # close the envs made so far
            self.close_extras()
            raise
        self.num_envs = len(self.envs)
        self.metadata = {**first.metadata, "autoreset_mode": AutoresetMode.NEXT_STEP}
        self.render_mode = first.render_mode
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        space = self.single_observation_space
        self._obs = np.zeros((self.num_envs, *space.shape), dtype=space.dtype)
        self._ended = np.zeros(self.num_envs, dtype=bool)  # reset at the next step

    def reset(
        self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start every env's episode afresh: env ``i`` from ``seed + i`` (or ``seed[i]``)."""
        if options and "reset_mask" in options:
            raise ValueError("SerialVectorEnv resets every env; it takes no reset_mask")
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, Sequence):
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"{len(seeds)} seeds for {self.num_envs} envs")
        else:
            seeds = [operator.index(seed) + i for i in range(self.num_envs)]
        infos: dict[str, Any] = {}
        for i, (env, env_seed) in enumerate(zip(self.envs, seeds)):
            self._obs[i], info = env.reset(seed=env_seed, options=options)
            if info:
                infos = self._add_info(infos, info, i)
        self._ended[:] = False
        return self._obs.copy(), infos

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """One step of every env (an env whose episode ended last step resets instead)."""
        rewards = np.zeros(self.num_envs)
        terminated = np.zeros(self.num_envs, dtype=bool)
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        actions = np.asarray(actions).tolist()
        if not isinstance(actions, list) or len(actions) != self.num_envs:
            got = len(actions) if isinstance(actions, list) else "a scalar"
            raise ValueError(f"step needs one action per env ({self.num_envs}), got {got}")
        for i, (env, action) in enumerate(zip(self.envs, actions)):
            if self._ended[i]:
                self._obs[i], info = env.reset()
            else:
                self._obs[i], rewards[i], terminated[i], truncated[i], info = env.step(action)
            if info:
                infos = self._add_info(infos, info, i)
        self._ended = terminated | truncated
        return self._obs.copy(), rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        for env in self.envs:
            env.close()
