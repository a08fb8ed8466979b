"""The fast paths: ``--vector split`` (same run as ``sync``, worker dies with its parent), the
default ``auto`` mode, the rollout workers' pipelined collector (it acts with the policy it was
started with, its rollouts are a sync collector's, its workers die with their parent), and
``FusedAdamStep`` (``Adam.step()`` as its one kernel call)."""

from __future__ import annotations

import copy
import csv
import io
import multiprocessing
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

from pylander import ops, split_env
from pylander.algorithms.reinforce import Reinforce
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import make_vector_env
from pylander.logger import WALL_CLOCK
from pylander.pipeline import PipelinedCollector
from pylander.policies import ActorCritic
from pylander.rollout import RolloutCollector
from pylander.split_env import SplitVectorEnv, resolve_vector_mode
from pylander.train import main as train_main
from pylander.vector_env import SerialVectorEnv


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
                    "--rollout-workers",
                    "0",
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


WORKERS = {
    "split": """
        import gymnasium as gym
        from pylander.split_env import SplitVectorEnv
        worker = SplitVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
        pid = worker._process.pid
    """,
    "rollout": """
        import torch
        from pylander.envs import make_vector_env
        from pylander.pipeline import PipelinedCollector
        from pylander.policies import ActorCritic
        policy = ActorCritic(4, 2, [8], critic=False)
        make = lambda count: make_vector_env("CartPole-v1", count)
        worker = PipelinedCollector(make, policy, 2, 8, torch.device("cpu"))
        pid = worker._workers[0].process.pid
    """,
}


@pytest.mark.parametrize("kind", WORKERS)
def test_worker_process_dies_when_its_parent_is_killed(tmp_path, kind):
    script = textwrap.dedent(WORKERS[kind]) + textwrap.dedent("""
        import time
        worker.reset(seed=0)
        print(pid, flush=True)
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
        assert not _running(worker), f"the {kind} worker outlived its parent"
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
    assert isinstance(envs, SerialVectorEnv)
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
        if step in (2, 4):  # resume as Reinforce does, from fresh tensors (a checkpoint's)
            saved = io.BytesIO()
            torch.save(opts[1].state_dict(), saved)
            saved.seek(0)
            opts[1].load_state_dict(torch.load(saved))
            first = next(nets[1].parameters())
            assert opts[1].state[first]["exp_avg"] is not lean._exp_avgs[0]  # stale until a step
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert opts[1].state[first]["exp_avg"] is lean._exp_avgs[0]  # the loaded state, stepped
    assert not torch.equal(a, ActorCritic(8, 4, [16, 16], critic=True).critic[-1].bias)
    assert opts[0].state_dict()["state"][0]["step"] == opts[1].state_dict()["state"][0]["step"] == 6
    with pytest.raises(ValueError, match="amsgrad"):
        FusedAdamStep(torch.optim.Adam(nets[0].parameters(), amsgrad=True, fused=True))


# --- --rollout-workers -----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_pipelined_rollout_is_the_sync_collectors_with_the_policy_it_started_with(workers):
    T, N = 40, 3  # long enough for CartPole episodes to end inside the rollout
    policy = ActorCritic(4, 2, [8], critic=True, normalize_obs=True)
    policy.normalizer.merge(10.0, torch.full((4,), 0.1, dtype=torch.float64), torch.ones(4) * 2)
    make = lambda count: make_vector_env("CartPole-v1", count)  # noqa: E731
    collector = PipelinedCollector(make, policy, N, T, torch.device("cpu"), workers)
    try:
        collector.reset(seed=5)
        collector.start(policy)
        acting = copy.deepcopy(policy)
        with torch.no_grad():  # the update that runs meanwhile moves the policy...
            for param in policy.parameters():
                param.add_(0.5)
            policy.normalizer.mean.add_(1.0)
        rollout = collector.collect(policy)
        log_probs = collector.behaviour_log_probs(rollout)
        finished = collector.pop_finished()
        # ...but the rollout, and its log-probabilities, are the policy's at start().
        obs = rollout.obs[:T].reshape(T * N, -1)
        torch.testing.assert_close(log_probs, torch.log_softmax(acting.logits(obs), -1))
        # Worker w steps envs [offset, offset + count) as a sync collector of those envs would,
        # its generator seeded with seed + offset.
        episodes = []
        for offset, count in [(0, N)] if workers == 1 else [(0, 2), (2, 1)]:
            envs = make(count)
            generator = torch.Generator().manual_seed(5 + offset)
            reference = RolloutCollector(envs, acting, T, generator, "cpu")
            reference.reset(seed=5 + offset)
            expected = reference.collect()
            for name in ["obs", "actions", "rewards", "terminated", "truncated", "valid"]:
                part = getattr(rollout, name)[:, offset : offset + count]
                assert torch.equal(part, getattr(expected, name)), name
            episodes += reference.pop_finished()
            envs.close()
        assert finished and finished == episodes
        # With none in flight, collect() starts one itself: with the current policy, no lag.
        second = collector.collect(policy)
        log_probs = collector.behaviour_log_probs(second)
        obs = second.obs[:T].reshape(T * N, -1)
        torch.testing.assert_close(log_probs, torch.log_softmax(policy.logits(obs), -1))
        # A reset discards the rollout in flight: the next starts from the reset's episodes.
        collector.start(policy)
        collector.reset(seed=9)
        third = collector.collect(policy)
        first_obs, _ = make(N).reset(seed=9)
        np.testing.assert_array_equal(third.obs[0].numpy(), first_obs)
    finally:
        collector.close()
    assert not any(worker.process.is_alive() for worker in collector._workers)


def test_pipelined_collector_raises_the_workers_error():
    def no_envs(count):
        raise ValueError("no envs for this test")

    policy = ActorCritic(4, 2, [8], critic=False)
    collector = PipelinedCollector(no_envs, policy, 2, 4, "cpu", workers=2)
    try:
        with pytest.raises(ValueError, match="no envs for this test"):
            collector.reset(seed=0)
    finally:
        collector.close()


def test_rollout_workers_repeat_exactly_and_collect_ahead_lags_from_the_second_update(tmp_path):
    args = ["--env", "CartPole-v1", "--quiet", "--num-envs", "4", "--num-steps", "64"]
    args += ["--total-steps", "2048", "--eval-episodes", "2", "--checkpoint-interval", "5"]
    args += ["--rollout-workers", "2"]
    runs = {}
    for name, flags in [("a", []), ("b", []), ("ahead", ["--collect-ahead"])]:
        out = tmp_path / name
        assert train_main([*args, *flags, "--out", str(out)]) == 0
        runs[name] = metrics_without_clock(out / "metrics.csv")
    assert len(runs["a"]) == 8 and runs["a"] == runs["b"]
    # The first update's rollout is the same, collected without lag (a behaviour weight of 1
    # but for the observation statistics' update); the later ones were collected during the
    # update before theirs, by the older policy.
    ahead, plain = runs["ahead"], runs["a"]
    assert [ahead[0][k] for k in ("episodes", "mean_return")] == [
        plain[0][k] for k in ("episodes", "mean_return")
    ]
    assert abs(float(ahead[0]["behaviour_weight"]) - 1) < 1e-2
    assert all(float(row["behaviour_weight"]) < 1 for row in ahead)
    assert [row["mean_return"] for row in ahead[1:]] != [row["mean_return"] for row in plain[1:]]


def test_lagged_update_weights_advantages_by_the_truncated_behaviour_ratio():
    start = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8], [0.9, 0.1]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.75], [0.4, 0.6], [0.9, 0.1]]))
    weights = Reinforce._behaviour_weights(start, behaviour, torch.tensor([0, 0, 1]))
    torch.testing.assert_close(weights, torch.tensor([1.0, 0.5, 1.0]))  # 2 truncated to 1


def test_lagged_update_with_an_unlagged_behaviour_is_the_plain_update():
    config = TrainConfig(env_id="CartPole-v1", num_envs=4, num_steps=32, rollout_workers=0)
    runs = []
    for lagged in [False, True]:
        torch.manual_seed(0)
        algo = Reinforce.build(config, torch.device("cpu"), Collective(torch.device("cpu")))
        algo.reset_envs(3)
        rollout = algo.collector.collect()
        behaviour = None
        if lagged:  # the behaviour policy is the current one: every weight is 1
            with torch.no_grad():  # as the update computes its own
                inputs = algo.policy.normalize(rollout.obs[:-1].flatten(0, 1))
            behaviour = ops.actor_critic_forward(inputs, algo.policy.actor_parameters(), [])[0]
        metrics = algo.update(rollout, behaviour)
        runs.append(({k: v.clone() for k, v in algo.policy.state_dict().items()}, metrics))
        algo.close()
    (plain, plain_metrics), (lagged, lagged_metrics) = runs
    assert all(torch.equal(plain[k], lagged[k]) for k in plain)
    assert lagged_metrics.pop("behaviour_weight") == 1.0 and lagged_metrics == plain_metrics


@pytest.mark.parametrize("kind", WORKERS)
def test_worker_process_ends_with_an_interpreter_that_never_closed_it(kind):
    script = textwrap.dedent(WORKERS[kind]) + textwrap.dedent("""
        worker.reset(seed=0)
        print(pid, flush=True)
        raise SystemExit(3)  # no close()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 3, done.stderr
    assert not _running(int(done.stdout))


def _start_collector(answers) -> None:
    try:
        PipelinedCollector(lambda n: None, ActorCritic(4, 2, [8], critic=False), 2, 4, "cpu")
        answers.put("started")
    except ValueError as exc:
        answers.put(str(exc))


def test_rollout_workers_refuse_a_daemonic_parent_with_a_clear_error():
    context = multiprocessing.get_context("fork")
    answers = context.Queue()
    daemon = context.Process(target=_start_collector, args=(answers,), daemon=True)
    daemon.start()
    answer = answers.get(timeout=60)
    daemon.join(timeout=10)
    assert "cannot be started from a daemonic process" in answer
    assert "--rollout-workers 0" in answer
