"""evaluate(): the episodes and returns of a gymnasium vector env, without stepping finished envs."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
import torch

import pylander.evaluate as evaluation
import pylander.forked as forked
from pylander.evaluate import EVAL_SEED_OFFSET, evaluate
from pylander.forked import map_forked
from pylander.policies import ActorCritic


def hovering_or_falling(obs: torch.Tensor) -> torch.Tensor:
    """LunarLander logits of a crude hover controller (main engine against a fall, side engines
    against the tilt): some episodes crash within ~150 steps, others hover to the time limit."""
    tilt = obs[:, 4] + 0.5 * obs[:, 5]
    action = torch.where(tilt > 0.05, 3, torch.where(tilt < -0.05, 1, 0))
    action = torch.where(obs[:, 3] < -0.02, 2, action)
    return torch.nn.functional.one_hot(action, 4).float()


def vector_env_returns(logits_fn, env_id: str, episodes: int, seed: int, num_envs: int):
    """The specification: every env of a vector env steps until each has played its share
    (env i plays episodes i, i + n, ...), and returns are listed as episodes end."""
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    envs = gym.vector.SyncVectorEnv([lambda: gym.make(env_id)] * num_envs)
    returns = []
    obs, _ = envs.reset(seed=seed + EVAL_SEED_OFFSET)
    running, after_done = np.zeros(num_envs), np.zeros(num_envs, dtype=bool)
    steps = 0
    while (quota > 0).any():
        actions = logits_fn(torch.as_tensor(obs)).argmax(-1).numpy()
        obs, reward, terminated, truncated, _ = envs.step(actions)
        steps += num_envs
        running += np.where(after_done, 0.0, reward)
        done = (terminated | truncated) & ~after_done
        for i in np.flatnonzero(done):
            if quota[i] > 0:
                returns.append(float(running[i]))
                quota[i] -= 1
            running[i] = 0.0
        after_done = terminated | truncated
    envs.close()
    return np.asarray(returns), steps


class CountSteps(gym.Wrapper):
    steps = 0

    def step(self, action):
        CountSteps.steps += 1
        return super().step(action)


@pytest.mark.parametrize(
    "episodes, num_envs, processes", [(1, 16, 2), (5, 2, 1), (12, 12, 3), (23, 6, 2), (23, 6, 1)]
)
def test_greedy_returns_are_the_vector_envs_in_fewer_steps(
    monkeypatch, episodes, num_envs, processes
):
    env_id = "LunarLander-v3"
    expected, vector_steps = vector_env_returns(hovering_or_falling, env_id, episodes, 3, num_envs)
    make_env = evaluation.make_env
    monkeypatch.setattr(evaluation, "make_env", lambda *a, **k: CountSteps(make_env(*a, **k)))
    CountSteps.steps = 0
    returns = evaluate(
        hovering_or_falling, env_id, episodes, 3, num_envs=num_envs, processes=processes
    )
    assert np.array_equal(returns, expected)  # the same episodes, bit for bit, in the same order
    assert len(set(returns.tolist())) == episodes  # distinct episodes, not one repeated
    if processes == 1 and episodes > 1:  # (a forked process's steps are not counted here)
        assert CountSteps.steps < 0.8 * vector_steps  # the vector env stepped finished envs


def test_an_mlps_greedy_returns_do_not_depend_on_the_split_or_the_envs_left():
    """With a real network the logits of a row can change in the last bits with the batch's
    size; the policy always gets every env's row, so they do not."""
    torch.manual_seed(4)
    policy = ActorCritic(8, 4, [64, 64], critic=False)
    for p in policy.parameters():  # larger weights, so greedy actions vary within an episode
        p.data.normal_(0, 0.5)
    expected, _ = vector_env_returns(policy, "LunarLander-v3", 11, 2, 4)
    for processes in (1, 3, 4):
        returns = evaluate(policy, "LunarLander-v3", 11, 2, num_envs=4, processes=processes)
        assert np.array_equal(returns, expected), processes


class FixedLengths(gym.Env):
    """Env 0's episodes last 2 then 3 steps, env 1's 5 (seeded 0 and 1): which one ends first
    depends on the autoreset step a vector env spends between env 0's episodes."""

    observation_space = gym.spaces.Box(-1, 1, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        if seed is not None:
            self.lengths = [2, 3] if seed % 2 == 0 else [5]
            self.episode = -1
        self.episode += 1
        self.t = 0
        return np.zeros(1, np.float32), {}

    def step(self, action):
        self.t += 1
        end = self.t == self.lengths[self.episode % len(self.lengths)]
        return np.zeros(1, np.float32), float(10 * self.episode + self.t), end, False, {}


def test_the_order_of_returns_counts_the_vector_envs_autoreset_step(monkeypatch):
    monkeypatch.setattr(evaluation, "make_env", lambda *a, **k: FixedLengths())
    monkeypatch.setattr(gym, "make", lambda *a, **k: FixedLengths())
    seed = -EVAL_SEED_OFFSET  # env i is reset with seed i
    expected, _ = vector_env_returns(lambda obs: torch.zeros(len(obs), 2), "x", 4, seed, 2)
    # env 0: 1+2 ends at step 2, autoreset at 3, 11+12+13 ends at 6; env 1: 1+...+5 ends at 5.
    # Without the autoreset step env 0's second episode would end at 5, before env 1's.
    assert expected.tolist() == [3.0, 15.0, 36.0, 65.0]
    returns = evaluate(lambda obs: torch.zeros(len(obs), 2), "x", 4, seed, num_envs=2)
    assert returns.tolist() == expected.tolist()


def test_stochastic_returns_repeat_per_seed_whatever_the_processes():
    def uniform(obs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(obs.shape[0], 2)

    def play(seed: int, processes: int) -> np.ndarray:
        return evaluate(
            uniform, "CartPole-v1", 9, seed, stochastic=True, num_envs=4, processes=processes
        )

    first = play(0, 1)
    assert first.shape == (9,)
    assert np.array_equal(first, play(0, 3))
    assert not np.array_equal(first, play(1, 1))


def test_forked_processes_return_in_order_and_raise_what_a_child_raised():
    def square_or_fail(x: int) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x * x

    assert map_forked(square_or_fail, [3, 1, 2]) == [9, 1, 4]
    with pytest.raises(ValueError, match="negative: -2"):
        map_forked(square_or_fail, [3, -2])


class NeedsTwoArguments(Exception):
    def __init__(self, code: int, detail: str):
        super().__init__(f"{code}: {detail}")


def test_an_exception_that_cannot_be_rebuilt_arrives_as_a_runtime_error_naming_it():
    def fail(x: int) -> int:
        if x:
            raise NeedsTwoArguments(7, "worker failed")
        return x

    with pytest.raises(RuntimeError, match="NeedsTwoArguments: 7: worker failed"):
        map_forked(fail, [0, 1])


def test_a_forked_process_that_dies_is_an_error():
    def die(x: int) -> int:
        if x:
            os._exit(3)
        return x

    with pytest.raises(RuntimeError, match=r"died \(exit code 3\)"):
        map_forked(die, [0, 1])
    with pytest.raises(RuntimeError, match=r"running functools.partial.*died"):
        map_forked(functools.partial(die), [0, 1])


def test_without_fork_the_items_run_here(monkeypatch):
    monkeypatch.setattr(forked, "can_fork", lambda: False)
    assert map_forked(lambda _: os.getpid(), [0, 1]) == [os.getpid()] * 2
    monkeypatch.undo()
    assert map_forked(lambda _: os.getpid(), [0, 1])[1] != os.getpid()


def test_a_child_of_a_parent_with_a_started_thread_pool_does_not_hang():
    """The parent's OpenMP/MKL pool does not survive the fork: a child that ran parallel
    regions with the parent's thread count waited for it forever."""
    script = textwrap.dedent("""
        import torch
        from pylander.forked import map_forked

        torch.set_num_threads(2)
        torch.tanh(torch.randn(1_000_000))  # starts the pool

        def work(n):
            return float(torch.tanh(torch.randn(1_000_000)).sum() * 0) + n

        print(map_forked(work, [0, 1]))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0.0, 1.0]"
