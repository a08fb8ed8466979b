"""Rollout collection under gymnasium 1.x autoreset, and truncation bootstrapping."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

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
    config = TrainConfig(
        num_envs=2,
        num_steps=num_steps,
        baseline=baseline,
        gamma=0.9,
        gae_lambda=0.8,
        reward_scale=1.0,
    )
    torch.manual_seed(0)
    algo = Reinforce(config, envs, 2, 2, torch.device("cpu"))
    algo.reset_envs(0)
    return algo


def test_autoreset_step_is_masked_and_episodes_are_counted():
    algo = make_algo(length=3, truncate=False, num_steps=8)
    rollout = algo.collector.collect()
    # steps 0-2: episode 1 (ends at 2); step 3: autoreset, action ignored; 4-6: episode 2; 7: reset
    assert rollout.valid[:, 0].tolist() == [True, True, True, False, True, True, True, False]
    assert rollout.terminated[:, 0].tolist() == [
        False,
        False,
        True,
        False,
        False,
        False,
        True,
        False,
    ]
    assert rollout.rewards[:, 0].tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    # The final observation is stored at the autoreset step (what the critic bootstraps from).
    assert rollout.obs[3, 0].tolist() == [3.0, 1.0] and rollout.obs[4, 0].tolist() == [0.0, 1.0]
    assert algo.collector.pop_finished() == [(3.0, 3)] * 4
    _, _, mask = algo.advantages(rollout)
    assert torch.equal(mask, rollout.valid)


# Under the critic V(obs) = 10 * obs[0] + 5, one Countdown(3) episode sees obs 0, 1, 2
# (V = 5, 15, 25), earns 1 per step and ends with final observation 3 (V = 35). Hand-computed
# GAE (gamma 0.9, lambda 0.8, so gamma * lambda = 0.72):
#   TD errors   1 + 0.9 * 15 - 5 = 9.5,   1 + 0.9 * 25 - 15 = 8.5,   and at the last step
#               truncated:  1 + 0.9 * V(final obs) - 25 = 1 + 31.5 - 25 = 7.5
#               terminated: 1 - 25 = -24 (the same would come from a truncation not bootstrapped)
#   advantages  A2 = delta2,  A1 = 8.5 + 0.72 * A2,  A0 = 9.5 + 0.72 * A1
EPISODE_ADVANTAGES = {"truncated": [19.508, 13.9, 7.5], "terminated": [3.1784, -8.78, -24.0]}


@pytest.mark.parametrize("end", ["truncated", "terminated"])
def test_truncated_tails_bootstrap_from_the_critic(end):
    algo = make_algo(length=3, truncate=end == "truncated", num_steps=7)
    rollout = algo.collector.collect()
    critic_values = 10.0 * rollout.obs[..., 0] + 5.0  # [T + 1, N], as the update passes them
    advantages, returns, mask = algo.advantages(rollout, critic_values)
    # Steps 0-2 and 4-6 are two episodes, ending at steps 2 and 6 (the rollout's last step, whose
    # final observation is obs[T]); step 3 is the autoreset and is left out of the loss.
    assert getattr(rollout, end)[[2, 6]].all()
    assert rollout.truncated.any().item() == (end == "truncated")
    assert mask[:, 0].tolist() == [True, True, True, False, True, True, True]
    want = torch.tensor(EPISODE_ADVANTAGES[end] * 2)[:, None].expand(6, 2)
    torch.testing.assert_close(advantages[mask].view(6, 2), want)
    values = torch.tensor([5.0, 15.0, 25.0] * 2)[:, None]
    torch.testing.assert_close(returns[mask].view(6, 2), want + values)


def test_advantages_take_the_critics_values_when_none_are_given():
    algo = make_algo(length=3, truncate=True, num_steps=7)
    rollout = algo.collector.collect()
    with torch.no_grad():
        critic_values = algo.policy.value(rollout.obs.flatten(0, 1)).view(8, 2)
    given, computed = algo.advantages(rollout, critic_values), algo.advantages(rollout)
    for a, b in zip(given, computed):
        torch.testing.assert_close(a, b)
    assert not torch.equal(given[0], algo.advantages(rollout, critic_values + 1.0)[0])


def test_returns_without_critic_drop_unfinished_tails():
    algo = make_algo(length=4, truncate=False, num_steps=6, baseline="none")
    rollout = algo.collector.collect()
    advantages, returns, mask = algo.advantages(rollout)
    # Episode 1 is steps 0-3, step 4 is the autoreset, step 5 starts an episode that won't finish.
    assert mask[:, 0].tolist() == [True, True, True, True, False, False]
    torch.testing.assert_close(
        returns[:4, 0], torch.tensor([1 + 0.9 + 0.81 + 0.729, 1 + 0.9 + 0.81, 1.9, 1.0])
    )
    torch.testing.assert_close(advantages, returns)
