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
        # NumPy views of the CPU buffers: writing a row through them costs a fraction of a
        # tensor index assignment, and collect() does several per env step.
        self._actions_np = self.actions.numpy()
        self._rewards_np = self.rewards.numpy()
        self._terminated_np = self.terminated.numpy()
        self._truncated_np = self.truncated.numpy()
        self._valid_np = self.valid.numpy()
        self._obs_np = self.obs.numpy() if self.obs.device.type == "cpu" else None
        self._obs_rows = self.obs.unbind(0)  # the policy's input at step t, as views made once
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
        # Inference mode: the policy's forward pass and the sampler skip autograd's dispatch and
        # bookkeeping entirely (no_grad still pays for them); nothing here is differentiated.
        with torch.inference_mode():
            act = self.policy.sampler(self.generator)
            for t in range(T):
                self._store_obs(t, self._next_obs)
                actions = act(self._obs_rows[t]).cpu().numpy()
                obs, reward, terminated, truncated, _ = self.envs.step(actions)
                valid = ~self._after_done
                self._actions_np[t] = actions
                self._rewards_np[t] = reward  # float64 -> float32, as np.asarray(..., float32)
                self._terminated_np[t] = terminated
                self._truncated_np[t] = truncated
                self._valid_np[t] = valid
                self._track_episodes(reward, terminated | truncated, valid)
                self._after_done = terminated | truncated
                self._next_obs = obs
            self._store_obs(T, self._next_obs)
        return Rollout(
            self.obs, self.actions, self.rewards, self.terminated, self.truncated, self.valid
        )

    def _store_obs(self, t: int, obs: np.ndarray) -> None:
        if self._obs_np is not None:
            self._obs_np[t] = obs
        else:
            self.obs[t].copy_(torch.from_numpy(np.asarray(obs, dtype=np.float32)))

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
