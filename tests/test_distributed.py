"""Data-parallel training: parity with one process, identical ranks, resume, and failing ranks.

Ranks are forked from the test process (cheap: no second torch import) and join a gloo group on
127.0.0.1; one test starts the real ``python -m pylander.train --procs 2`` launcher. Every wait
has a timeout, and every process a test starts is killed when it ends.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import multiprocessing
import os
import pickle
import queue as queue_module
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pylander.checkpoint import CheckpointError, load_checkpoint
from pylander.config import TrainConfig
from pylander.distributed import Collective, DistributedError, init_from_env, shutdown
from pylander.envs import make_vector_env
from pylander.logger import WALL_CLOCK
from pylander.rollout import Rollout

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)

RANK_TIMEOUT_S = 120  # generous: the suite shares 2 cores with other work


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun would set for a rank, on 127.0.0.1 only."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GLOO_SOCKET_IFNAME": "lo",
        "PYLANDER_NO_TQDM": "1",
    }


def _rank_main(target, rank, world_size, port, results, env, init):
    os.environ.update(rank_env(rank, world_size, port), **env)
    try:
        if init:
            init_from_env(torch.device("cpu"))
        # Plain pickle: the queue's own pickler would share tensors through this process's fds.
        value = pickle.dumps(target(rank))
        results.put((rank, True, value))
    except BaseException as exc:  # reported to the test, which decides
        results.put((rank, False, pickle.dumps((type(exc).__name__, str(exc)))))
    finally:
        shutdown()


def start_ranks(target, world_size=2, *, env=None, init=True):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(
            target=_rank_main,
            daemon=False,  # a daemonic rank could not start rollout workers; reap() ends them
            args=(target, rank, world_size, port, results, env or {}, init),
        )
        for rank in range(world_size)
    ]
    for p in procs:
        p.start()
    return procs, results


def collect(procs, results, *, ranks=None, timeout=RANK_TIMEOUT_S) -> dict:
    """{rank: (ok, value)} from ``ranks`` (default all) within ``timeout``."""
    want = set(range(len(procs)) if ranks is None else ranks)
    got: dict = {}
    deadline = time.monotonic() + timeout
    while want - set(got):
        try:
            rank, ok, value = results.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue_module.Empty:
            pytest.fail(f"ranks {sorted(want - set(got))} did not finish within {timeout} s")
        got[rank] = (ok, pickle.loads(value))
    return got


def reap(procs, grace_s: float = 10) -> None:
    """Wait up to ``grace_s`` for each process to exit, then kill it."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(timeout=max(deadline - time.monotonic(), 0))
        if p.is_alive():
            p.kill()
            p.join()


def run_ranks(target, world_size=2, **kwargs) -> list:
    procs, results = start_ranks(target, world_size, **kwargs)
    try:
        got = collect(procs, results)
    finally:
        reap(procs)
    return [got[r] for r in range(world_size)]


def values(outcomes: list) -> list:
    for rank, (ok, value) in enumerate(outcomes):
        assert ok, f"rank {rank} failed: {value}"
    return [value for _, value in outcomes]


# --- parity: 2 ranks x E envs == 1 process x 2E envs, on the same episodes --------------------

E, T, UPDATES = 3, 40, 4
PARITY_CASES = {
    "value": {},
    "value-minibatches": {"minibatches": 4},
    "mean-epochs": {"baseline": "mean", "minibatches": 3, "epochs": 2},
    "none-raw": {"baseline": "none", "normalize_advantages": False, "minibatches": 2},
}


def parity_config(case: str, num_envs: int) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {k: v for k, v in PARITY_CASES[case].items() if k in fields}
    return TrainConfig(
        env_id="CartPole-v1",
        seed=3,
        num_envs=num_envs,
        num_steps=T,
        ent_coef=0.01,
        learning_rate=3e-3,
        **settings,
    )


def make_reinforce(config: TrainConfig):
    from pylander.algorithms.reinforce import Reinforce

    torch.manual_seed(config.seed)
    envs = make_vector_env(config.env_id, config.num_envs)
    return Reinforce(config, envs, 4, 2, torch.device("cpu"), Collective()), envs


def columns(rollout: Rollout, rank: int) -> Rollout:
    part = slice(rank * E, (rank + 1) * E)
    return Rollout(
        *(getattr(rollout, f.name)[:, part].clone() for f in dataclasses.fields(Rollout))
    )


@pytest.fixture(scope="module")
def single_process_runs():
    """Per case: the rollouts one process with 2E envs collected, and its parameters after."""
    runs = {}
    for case in PARITY_CASES:
        algo, envs = make_reinforce(parity_config(case, 2 * E))
        start = {k: v.clone() for k, v in algo.policy.state_dict().items()}
        algo.reset_envs(11)
        rollouts = []
        for _ in range(UPDATES):
            rollout = algo.collector.collect()
            rollouts.append(
                Rollout(*(getattr(rollout, f.name).clone() for f in dataclasses.fields(Rollout)))
            )
            algo.update(rollout)
        envs.close()
        runs[case] = (rollouts, start, algo.policy.state_dict())
    return runs


def test_two_ranks_make_the_single_process_update(single_process_runs):
    def rank_updates(rank):
        finals = {}
        for case, (rollouts, _, _) in single_process_runs.items():
            algo, envs = make_reinforce(parity_config(case, E))
            for rollout in rollouts:
                algo.update(columns(rollout, rank))
            envs.close()
            finals[case] = algo.policy.state_dict()
        return finals

    ranks = values(run_ranks(rank_updates))
    for case, (_, start, want) in single_process_runs.items():
        for name, value in want.items():
            # Bitwise equal across ranks; equal to one process up to float summation order.
            torch.testing.assert_close(ranks[1][case][name], ranks[0][case][name], rtol=0, atol=0)
            torch.testing.assert_close(
                ranks[0][case][name],
                value,
                rtol=1e-5,
                atol=1e-6,
                msg=lambda m, case=case, name=name: f"{case} {name}: {m}",
            )
        moved = max((want[k] - start[k]).abs().max().item() for k in want)
        assert moved > 1e-3, f"{case}: the parameters barely moved ({moved})"


# --- the Collective's guards --------------------------------------------------------------------


def test_collective_guards_fail_on_every_rank():
    def guards(rank):
        comm = Collective()
        seen = {"any": [comm.any(rank == 1), comm.any(False)]}
        params = {"w": torch.arange(6.0).view(2, 3)}
        comm.check_identical(params)
        params["w"][1, 2] += 1e-6 * rank  # one rank drifts by a rounding error
        try:
            comm.check_identical(params)
        except DistributedError as exc:
            seen["drift"] = str(exc)

        def load():
            raise CheckpointError("bad checkpoint on rank 0's disk")

        try:
            comm.on_main(load)
        except CheckpointError as exc:
            seen["on_main"] = str(exc)
        seen["on_main_value"] = comm.on_main(lambda: rank * 10 + 7)
        try:
            comm.check_same_settings("num_envs = 4" if rank == 0 else "num_envs = 8")
        except ValueError as exc:
            seen["settings"] = str(exc)
        return seen

    for seen in values(run_ranks(guards)):
        assert seen["any"] == [True, False]
        assert "differ" in seen["drift"] and "[1]" in seen["drift"]
        assert seen["on_main"] == "bad checkpoint on rank 0's disk"
        assert seen["on_main_value"] == 7  # rank 0's value on every rank
        assert "ranks [1]" in seen["settings"]


def test_seed_algorithm_refuses_several_ranks(tmp_path):
    from pylander.trainer import train

    def target(rank):
        return train(TrainConfig(algo="notebook", out=str(tmp_path / "notebook"), quiet=True))

    for ok, value in run_ranks(target):
        assert not ok and value[0] == "ValueError" and "single-process" in value[1]


# --- the trainer: stop agreement, identical ranks, resume ---------------------------------------


def test_rank_zero_alone_evaluates_and_all_ranks_stop_together(tmp_path, monkeypatch):
    import pylander.run as run  # where a run evaluates and finds its reward threshold
    import pylander.trainer as trainer

    calls = []
    real_evaluate = run.evaluate

    def counting_evaluate(*args, **kwargs):
        calls.append(1)  # in the forked rank's own memory
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(run, "evaluate", counting_evaluate)
    monkeypatch.setattr(run, "reward_threshold", lambda env_id: 0.0)  # any policy solves it
    config = TrainConfig(
        env_id="CartPole-v1",
        num_envs=4,
        num_steps=16,
        total_steps=100_000,
        stop_when_solved=True,
        eval_episodes=2,
        eval_interval=1024,
        eval_interval_episodes=2,
        out=str(tmp_path / "solved"),
        quiet=True,
    )

    def target(rank):
        return trainer.train(dataclasses.replace(config)), len(calls)

    (summary0, calls0), (summary1, calls1) = values(run_ranks(target))
    assert summary0["stop_reason"] == summary1["stop_reason"] == "solved"
    assert summary0["steps"] == summary1["steps"] == 1024  # the first periodic evaluation
    assert summary0["eval_mean_return"] == summary1["eval_mean_return"]
    # Only rank 0 played evaluation episodes: the periodic one and its confirmation.
    assert (calls0, calls1) == (2, 0)
    assert json.loads((tmp_path / "solved" / "summary.json").read_text())["stop_reason"] == "solved"


RUN = [
    "--env",
    "CartPole-v1",
    "--num-envs",
    "2",
    "--num-steps",
    "16",
    "--checkpoint-interval",
    "8",
    "--no-anneal-lr",
    "--eval-episodes",
    "2",
    "--quiet",
]


def read_metrics(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(fh)]


def train_ranks(args: list[str], world_size: int = 2) -> list:
    from pylander.train import main

    return values(run_ranks(lambda rank: main(args), world_size, init=False))


@pytest.fixture(scope="module")
def launcher_run(tmp_path_factory):
    """`python -m pylander.train --procs 2`, the one-command form, for 16 updates."""
    out = tmp_path_factory.mktemp("launcher") / "run"
    env = {
        **os.environ,
        "GLOO_SOCKET_IFNAME": "lo",
        "PYLANDER_NO_TQDM": "1",
        "PYLANDER_DIST_TIMEOUT": "60",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylander.train",
            "--procs",
            "2",
            *RUN,
            "--total-steps",
            "1024",
            "--out",
            str(out),
        ],
        env=env,
        cwd=out.parent,
        capture_output=True,
        text=True,
        timeout=RANK_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_launcher_runs_two_ranks(launcher_run):
    summary = json.loads((launcher_run / "summary.json").read_text())
    assert summary["steps"] == 1024 and summary["updates"] == 16  # 2 ranks x 2 envs x 16 steps
    assert summary["eval_episodes"] == 2 and summary["stop_reason"] == "budget"
    rows = read_metrics(launcher_run / "metrics.csv")
    assert [int(r["steps"]) for r in rows] == [64 * u for u in range(1, 17)]
    # The final state passed the run's own check that both ranks hold identical parameters
    # (Collective.check_identical, which test_collective_guards_fail_on_every_rank exercises).
    payload = load_checkpoint(launcher_run / "checkpoint.pt")
    assert payload["trainer"]["counters"]["update"] == 16
    assert sorted(p.name for p in launcher_run.iterdir() if not p.name.startswith("events")) == [
        "best.pt",
        "checkpoint.pt",
        "config.toml",
        "learning_curve.png",
        "metrics.csv",
        "summary.json",
    ]


def test_resumed_two_rank_run_matches_the_uninterrupted_one(launcher_run, tmp_path):
    out = tmp_path / "resumed"
    assert train_ranks([*RUN, "--total-steps", "512", "--out", str(out)]) == [0, 0]
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["counters"]["update"] == 8
    assert train_ranks(["--resume", str(out), "--total-steps", "1024"]) == [0, 0]
    assert read_metrics(out / "metrics.csv") == read_metrics(launcher_run / "metrics.csv")
    want = load_checkpoint(launcher_run / "checkpoint.pt")["algorithm"]["policy"]
    got = load_checkpoint(out / "checkpoint.pt")["algorithm"]["policy"]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)


# --- a rank that dies or hangs ------------------------------------------------------------------


def wait_for_updates(metrics: Path, updates: int, procs, timeout=RANK_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) > updates:
            return
        if not all(p.is_alive() for p in procs):
            pytest.fail("a rank ended before training got going")
        time.sleep(0.05)
    pytest.fail(f"no {updates} updates within {timeout} s")


@pytest.mark.parametrize("fault", ["killed", "stopped"])
def test_a_lost_rank_makes_the_others_fail_clearly(tmp_path, fault):
    """SIGKILL: the survivor fails at its next collective; SIGSTOP (a hang): after the timeout."""
    from pylander.train import main

    out = tmp_path / "run"
    args = [*RUN, "--total-steps", "100000000", "--out", str(out)]
    timeout_s = 5

    def run(rank):
        # main() turns DistributedError into "error: ..." on stderr and exit status 1.
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            code = main(args)
        return code, stderr.getvalue()

    procs, results = start_ranks(run, 2, init=False, env={"PYLANDER_DIST_TIMEOUT": str(timeout_s)})
    try:
        wait_for_updates(out / "metrics.csv", 3, procs)
        os.kill(procs[1].pid, signal.SIGKILL if fault == "killed" else signal.SIGSTOP)
        lost_at = time.monotonic()
        got = collect(procs, results, ranks=[0], timeout=timeout_s + 60)
    finally:
        reap(procs, grace_s=0)
    ok, (code, stderr) = got[0]
    assert ok and code == 1, (ok, code, stderr)
    assert "error: rank 0 of 2:" in stderr and "Another rank has probably died" in stderr, stderr
    if fault == "stopped":
        assert time.monotonic() - lost_at >= timeout_s - 1
