"""SerialVectorEnv: gymnasium's SyncVectorEnv, bit for bit, for the envs pylander trains."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from pylander.envs import make_env, make_vector_env
from pylander.vector_env import SerialVectorEnv


class Informative(gym.Env):
    """Short episodes of random length that report something in ``info`` on some steps."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float64)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.left = int(self.np_random.integers(1, 6))
        return self.np_random.normal(size=3), {"left": self.left}

    def step(self, action):
        self.left -= 1
        obs = self.np_random.normal(size=3) + action
        info = {"odd": action} if action % 2 else {}
        truncated = self.left == 0 and action == 0
        return obs, float(obs[0]), self.left == 0 and not truncated, truncated, info


@pytest.mark.parametrize(
    "make, steps",
    [(lambda: make_env("LunarLander-v3"), 1500), (lambda: make_env("CartPole-v1"), 600),
     (Informative, 300)],
)  # fmt: skip
def test_steps_are_sync_vector_envs_bit_for_bit(make, steps):
    ours, theirs = SerialVectorEnv([make] * 5), gym.vector.SyncVectorEnv([make] * 5)
    rng = np.random.default_rng(0)
    for seed in (11, [3, 1, 4, 1, 5]):  # a reset mid-run restarts the episodes
        for a, b in zip(ours.reset(seed=seed), theirs.reset(seed=seed)):
            np.testing.assert_equal(a, b)
        for _ in range(steps):
            actions = rng.integers(0, ours.single_action_space.n, size=5)
            mine, gyms = ours.step(actions), theirs.step(actions)
            for a, b in zip(mine[:4], gyms[:4]):
                assert a.dtype == b.dtype and np.array_equal(a, b)
            np.testing.assert_equal(mine[4], gyms[4])  # the same infos, masks included
    assert ours.single_observation_space == theirs.single_observation_space
    assert ours.action_space == theirs.action_space
    ours.close()
    theirs.close()


def test_observations_returned_are_copies():
    envs = make_vector_env("CartPole-v1", 2)
    assert isinstance(envs, SerialVectorEnv)
    first, _ = envs.reset(seed=0)
    kept = first.copy()
    envs.step(np.zeros(2, dtype=np.int64))
    assert np.array_equal(first, kept)
    envs.close()


def test_rejects_what_a_categorical_policy_cannot_do_and_closes_the_envs():
    closed = []

    class Tracked(Informative):
        def close(self):
            closed.append(self)

    class Continuous(Tracked):
        action_space = gym.spaces.Box(-1, 1, (1,))

    with pytest.raises(ValueError, match="needs a Discrete one"):
        SerialVectorEnv([Continuous] * 2)
    assert len(closed) == 2
    with pytest.raises(ValueError, match="same spaces"):
        SerialVectorEnv([Tracked, Continuous])
    envs = SerialVectorEnv([Informative] * 3)
    with pytest.raises(ValueError, match="2 seeds for 3 envs"):
        envs.reset(seed=[1, 2])
    with pytest.raises(ValueError, match="takes no reset_mask"):
        envs.reset(options={"reset_mask": np.ones(3, dtype=bool)})
    envs.reset(seed=0)
    with pytest.raises(ValueError, match=r"one action per env \(3\), got 2"):
        envs.step(np.zeros(2, dtype=np.int64))

    def broken():
        raise RuntimeError("cannot make this env")

    closed.clear()
    with pytest.raises(RuntimeError, match="cannot make this env"):
        SerialVectorEnv([Tracked, Tracked, broken])
    assert len(closed) == 2  # the envs made before it
