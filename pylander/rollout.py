"""Rollout collection from a gymnasium vector env, with 1.x autoreset handled.

gymnasium 1.x vector envs default to NEXT_STEP autoreset: the step that ends an episode returns
its final observation, and the *next* ``step`` call ignores the action, resets that env and
returns the reset observation with reward 0. That reset step is marked ``valid = False`` and
never enters the loss. Because the final observation is stored at the reset step, a truncated
episode's tail can be bootstrapped from the critic's value of it (see ``algorithms/reinforce``).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pylander.policies import ActorCritic


@dataclass
class Rollout:
    """``T`` steps of ``N`` envs. ``obs[T]`` is the observation after the last step."""

    obs: Tensor  # [T + 1, N, obs_size], on the policy's device
    actions: Tensor  # [T, N] int64
    rewards: Tensor  # [T, N] float32
    terminated: Tensor  # [T, N] bool
    truncated: Tensor  # [T, N] bool
    valid: Tensor  # [T, N] bool, False on autoreset steps

    @property
    def num_steps(self) -> int:
        """Env steps in this rollout, reset steps included (they cost an env step too)."""
        return self.actions.numel()


class RolloutCollector:
    """Steps ``envs`` with ``policy`` and keeps per-episode statistics across rollouts."""

    def __init__(
        self,
        envs: gym.vector.VectorEnv,
        policy: ActorCritic,
        num_steps: int,
        generator: torch.Generator,
        device: torch.device,
    ):
        self.envs, self.policy, self.generator, self.device = envs, policy, generator, device
        n, obs_size = envs.num_envs, policy.obs_size
        self.obs = torch.zeros(num_steps + 1, n, obs_size, device=device)
        self.actions = torch.zeros(num_steps, n, dtype=torch.long)
        self.rewards = torch.zeros(num_steps, n)
        self.terminated = torch.zeros(num_steps, n, dtype=torch.bool)
        self.truncated = torch.zeros(num_steps, n, dtype=torch.bool)
        self.valid = torch.zeros(num_steps, n, dtype=torch.bool)
        self._next_obs = np.zeros((n, obs_size), dtype=np.float32)
        self._after_done = np.zeros(n, dtype=bool)
        self._episode_return = np.zeros(n)
        self._episode_length = np.zeros(n, dtype=np.int64)
        self.finished: list[tuple[float, int]] = []
        """(return, length) of episodes completed since the last ``pop_finished``."""

    def reset(self, seed: int) -> None:
        """Start fresh episodes in every env; episodes in progress are dropped, not counted."""
        obs, _ = self.envs.reset(seed=seed)
        self._next_obs = obs
        self._after_done[:] = False
        self._episode_return[:] = 0.0
        self._episode_length[:] = 0

    def collect(self) -> Rollout:
        T = self.actions.shape[0]
        for t in range(T):
            obs_t = self.obs[t]
            obs_t.copy_(torch.from_numpy(np.asarray(self._next_obs, dtype=np.float32)))
            actions = self.policy.act(obs_t, self.generator).cpu()
            obs, reward, terminated, truncated, _ = self.envs.step(actions.numpy())
            valid = ~self._after_done
            self.actions[t] = actions
            self.rewards[t] = torch.from_numpy(np.asarray(reward, dtype=np.float32))
            self.terminated[t] = torch.from_numpy(terminated)
            self.truncated[t] = torch.from_numpy(truncated)
            self.valid[t] = torch.from_numpy(valid)
            self._track_episodes(reward, terminated | truncated, valid)
            self._after_done = terminated | truncated
            self._next_obs = obs
        self.obs[T].copy_(torch.from_numpy(np.asarray(self._next_obs, dtype=np.float32)))
        return Rollout(self.obs, self.actions, self.rewards, self.terminated, self.truncated, self.valid)

    def _track_episodes(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> None:
        self._episode_return += np.where(valid, reward, 0.0)
        self._episode_length += valid
        for i in np.flatnonzero(done & valid):
            self.finished.append((float(self._episode_return[i]), int(self._episode_length[i])))
            self._episode_return[i] = 0.0
            self._episode_length[i] = 0

    def pop_finished(self) -> list[tuple[float, int]]:
        finished, self.finished = self.finished, []
        return finished
