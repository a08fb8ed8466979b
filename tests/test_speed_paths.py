"""The fast paths: ``--vector split`` (same run as ``sync``, worker dies with its parent), the
default ``auto`` mode, and ``FusedAdamStep`` (``Adam.step()`` as its one kernel call)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

from pylander import split_env
from pylander.envs import make_vector_env
from pylander.logger import WALL_CLOCK
from pylander.policies import ActorCritic
from pylander.split_env import SplitVectorEnv, resolve_vector_mode
from pylander.train import main as train_main


def metrics_without_clock(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("num_envs", [3, 4])  # an odd count splits unevenly
def test_split_env_steps_exactly_as_sync(num_envs):
    fns = [lambda: gym.make("LunarLander-v3") for _ in range(num_envs)]
    sync, split = gym.vector.SyncVectorEnv(fns), SplitVectorEnv(fns)
    try:
        assert split.num_envs == num_envs and split.single_action_space == sync.single_action_space
        np.testing.assert_array_equal(sync.reset(seed=11)[0], split.reset(seed=11)[0])
        rng = np.random.default_rng(0)
        ends = 0
        for _ in range(300):  # long enough for crashes, i.e. terminations and autoresets
            actions = rng.integers(0, 4, size=num_envs)
            expected, got = sync.step(actions)[:4], split.step(actions)[:4]
            for want, have in zip(expected, got):
                np.testing.assert_array_equal(want, have)
                assert want.dtype == have.dtype
            ends += int(expected[2].sum())
        assert ends > 0
    finally:
        sync.close()
        split.close()
    assert not split._process.is_alive()


def test_split_vector_env_gives_the_same_run_as_sync(tmp_path):
    runs = []
    for mode in ["sync", "split"]:
        out = tmp_path / mode
        assert (
            train_main(
                [
                    "--env",
                    "CartPole-v1",
                    "--quiet",
                    "--vector",
                    mode,
                    "--num-envs",
                    "4",
                    "--num-steps",
                    "64",
                    "--total-steps",
                    "2048",
                    "--normalize-obs",
                    "--eval-episodes",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        runs.append(metrics_without_clock(out / "metrics.csv"))
    assert len(runs[0]) == 8 and runs[0] == runs[1]


def test_split_env_rejects_a_single_env():
    with pytest.raises(ValueError, match="num_envs=1"):
        SplitVectorEnv([lambda: gym.make("CartPole-v1")])


def test_split_env_reports_a_failing_worker():
    envs = SplitVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
    try:
        envs.reset(seed=0)
        with pytest.raises(RuntimeError, match="split env's worker failed"):
            envs.step(np.array([0, 7]))  # 7 is no CartPole action: the worker's env raises
    finally:
        envs.close()


def test_split_worker_dies_when_its_parent_is_killed(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        import gymnasium as gym
        from pylander.split_env import SplitVectorEnv
        envs = SplitVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
        envs.reset(seed=0)
        print(envs._process.pid, flush=True)
        time.sleep(120)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        worker = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(worker), "the split env's worker outlived its parent"
    finally:
        parent.kill()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def test_auto_mode_splits_only_with_a_second_core_and_two_envs(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(split_env.os, "sched_getaffinity", lambda pid: {0, 1})
    assert resolve_vector_mode("auto", 16) == "split"
    assert resolve_vector_mode("auto", 1) == "sync"
    assert resolve_vector_mode("sync", 16) == "sync" and resolve_vector_mode("async", 2) == "async"
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on two cores: one core each
    assert resolve_vector_mode("auto", 16) == "sync"
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.setattr(split_env.os, "sched_getaffinity", lambda pid: {0})
    assert resolve_vector_mode("auto", 16) == "sync"
    envs = make_vector_env("CartPole-v1", 2, "auto")
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    envs.close()


def test_fused_adam_step_is_adam_step_bit_for_bit():
    """FusedAdamStep against Adam.step() on a twin policy, through a state_dict round trip."""
    from pylander.algorithms.fused_adam import FusedAdamStep

    torch.manual_seed(0)
    nets = [ActorCritic(8, 4, [16, 16], critic=True) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(n.parameters(), lr=3e-3, eps=1e-5, fused=True) for n in nets]
    lean = FusedAdamStep(opts[1])
    for step in range(6):
        for opt in opts:  # a schedule, as --anneal-lr writes it
            opt.param_groups[0]["lr"] = 3e-3 / (step + 1)
        grads = [torch.randn_like(p) for p in nets[0].parameters()]
        for net in nets:
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
        opts[0].step()
        lean.step()
        if step == 2:  # resume as Reinforce does: load_state_dict replaces the param group
            opts[1].load_state_dict(opts[1].state_dict())
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(a, ActorCritic(8, 4, [16, 16], critic=True).critic[-1].bias)
    assert opts[0].state_dict()["state"][0]["step"] == opts[1].state_dict()["state"][0]["step"] == 6
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdamStep(torch.optim.Adam(nets[0].parameters(), amsgrad=True, fused=True))
