"""Rollout collection under gymnasium 1.x autoreset, and truncation bootstrapping."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from pylander import reference
from pylander.algorithms.reinforce import Reinforce
from pylander.config import TrainConfig


class Countdown(gym.Env):
    """Episodes of exactly `length` steps, reward 1 per step; obs = (step in episode, 1)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, length: int, truncate: bool):
        self.length, self.truncate = length, truncate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0, 1.0], np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.length
        obs = np.array([float(self.t), 1.0], np.float32)
        return obs, 1.0, end and not self.truncate, end and self.truncate, {}


def make_algo(length: int, truncate: bool, num_steps: int, baseline: str = "value") -> Reinforce:
    envs = gym.vector.SyncVectorEnv([lambda: Countdown(length, truncate) for _ in range(2)])
    config = TrainConfig(num_envs=2, num_steps=num_steps, baseline=baseline, gamma=0.9, gae_lambda=0.8,
                         reward_scale=1.0)
    torch.manual_seed(0)
    algo = Reinforce(config, envs, 2, 2, torch.device("cpu"))
    algo.reset_envs(0)
    return algo


def test_autoreset_step_is_masked_and_episodes_are_counted():
    algo = make_algo(length=3, truncate=False, num_steps=8)
    rollout = algo.collector.collect()
    # steps 0-2: episode 1 (ends at 2); step 3: autoreset, action ignored; 4-6: episode 2; 7: reset
    assert rollout.valid[:, 0].tolist() == [True, True, True, False, True, True, True, False]
    assert rollout.terminated[:, 0].tolist() == [False, False, True, False, False, False, True, False]
    assert rollout.rewards[:, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    # The final observation is stored at the autoreset step (what the critic bootstraps from).
    assert rollout.obs[3, 0].tolist() == [3.0, 1.0] and rollout.obs[4, 0].tolist() == [0.0, 1.0]
    assert algo.collector.pop_finished() == [(3.0, 3)] * 4
    _, _, mask = algo.advantages(rollout)
    assert torch.equal(mask, rollout.valid)


@pytest.mark.parametrize("truncate", [False, True])
def test_truncated_tails_bootstrap_from_the_critic(truncate, monkeypatch):
    algo = make_algo(length=3, truncate=truncate, num_steps=7)
    value = lambda obs: 10.0 * obs[..., 0] + 5.0  # noqa: E731  (a known critic)
    monkeypatch.setattr(algo.policy, "value", value)
    rollout = algo.collector.collect()
    advantages, returns, _ = algo.advantages(rollout)

    values = value(rollout.obs)  # [T + 1, N]
    rewards = rollout.rewards.clone()
    if truncate:  # steps 2 and 6 truncate: each tail is worth gamma * V(its final observation)
        rewards[2] += 0.9 * values[3]
        rewards[6] += 0.9 * values[7]  # the rollout's last step: final obs is obs[T]
    dones = rollout.terminated | rollout.truncated | ~rollout.valid
    want = reference.gae(rewards, values[:7], dones, values[7], 0.9, 0.8)
    torch.testing.assert_close(advantages, want)
    torch.testing.assert_close(returns, want + values[:7])
    # Terminal vs truncated differ exactly by the bootstrap at the last step of the episode.
    assert (rollout.truncated.any().item()) == truncate


def test_returns_without_critic_drop_unfinished_tails():
    algo = make_algo(length=4, truncate=False, num_steps=6, baseline="none")
    rollout = algo.collector.collect()
    advantages, returns, mask = algo.advantages(rollout)
    # Episode 1 is steps 0-3, step 4 is the autoreset, step 5 starts an episode that won't finish.
    assert mask[:, 0].tolist() == [True, True, True, True, False, False]
    torch.testing.assert_close(returns[:4, 0], torch.tensor([1 + 0.9 + 0.81 + 0.729, 1 + 0.9 + 0.81, 1.9, 1.0]))
    torch.testing.assert_close(advantages, returns)
