"""The run directory: one run at a time, and what a run saves for the next invocation.

* a training run holds a lock on its directory: a second run, ``--force`` or ``--resume`` is
  refused naming the holder, and a run killed outright (SIGKILL) leaves no lock that blocks;
* ``--resume`` saves only the learning settings given with it; a finished run is not resumed
  unless its budget is raised;
* config.toml holds no ``out``, so a run's config can start another run anywhere but there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pylander import rundir
from pylander.checkpoint import load_checkpoint
from pylander.config import TrainConfig
from pylander.train import main as train_main
from pylander.trainer import train

from conftest import CLI_FAST as FAST
from conftest import SUBPROCESS_ENV, usage_error


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rundir") / "run"
    assert train_main([*FAST, "--total-steps", "128", "--out", str(out)]) == 0
    return out


# --- the lock --------------------------------------------------------------------------------


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not (out / "checkpoint.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint in time")
        time.sleep(0.02)


def test_a_running_directory_is_refused_until_its_holder_is_killed(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pylander.train",
            *FAST,
            "--total-steps",
            "10000000",
            "--out",
            str(out),
        ],
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_checkpoint(proc, out)
        holder = f"pid {proc.pid} on host {socket.gethostname()}"
        assert holder in rundir.holder(out)
        before = snapshot(out)
        for argv, flag in [
            ([*FAST, "--total-steps", "64", "--out", str(out)], "--out"),
            ([*FAST, "--total-steps", "64", "--out", str(out), "--force"], "--out"),
            (["--resume", str(out)], "--resume"),
        ]:
            message = usage_error(argv, capsys)
            assert message.startswith(f"{flag} {out} is in use by another training run ({holder}")
        assert snapshot(out).keys() >= before.keys()  # --force deleted nothing
        # The Python API takes the same lock.
        with pytest.raises(
            rundir.RunDirectoryError, match=f"in use by another training run \\({holder}"
        ):
            train(
                TrainConfig(
                    env_id="CartPole-v1",
                    num_envs=4,
                    num_steps=16,
                    total_steps=64,
                    quiet=True,
                    out=str(out),
                )
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    # The kernel released the dead holder's lock; its file, with its stale name, is left over.
    assert json.loads((out / rundir.LOCK_NAME).read_text())["pid"] == proc.pid
    assert rundir.holder(out) is None
    steps = load_checkpoint(out / "checkpoint.pt")["trainer"]["counters"]["steps"]
    assert train_main(["--resume", str(out), "--total-steps", str(steps + 128)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == steps + 128
    assert not (out / rundir.LOCK_NAME).exists()  # a run that ends removes its lock file


def test_a_stale_lock_file_is_no_run_marker_and_survives_force(finished_run, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rundir.LOCK_NAME).write_text('{"pid": 1, "host": "gone", "since": "then"}')
    assert rundir.markers(out) == [] and rundir.holder(out) is None
    assert train_main([*FAST, "--total-steps", "64", "--out", str(out)]) == 0
    assert (
        train_main([*FAST, "--total-steps", "64", "--seed", "5", "--out", str(out), "--force"]) == 0
    )
    assert json.loads((out / "summary.json").read_text())["seed"] == 5


def test_claim_is_reentrant_for_its_thread_only(tmp_path):
    out = tmp_path / "run"
    with rundir.claim(out):
        with rundir.claim(out):  # the CLI claims, then the trainer it calls claims again
            assert (out / rundir.LOCK_NAME).exists()
        assert (
            rundir.holder(out)
            == f"pid {os.getpid()} on host {socket.gethostname()}, since "
            + json.loads((out / rundir.LOCK_NAME).read_text())["since"]
        )
        refused = []

        def other_thread():
            try:
                with rundir.claim(out):
                    pass
            except rundir.RunDirectoryError as exc:
                refused.append(str(exc))

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert refused and "another thread of this process" in refused[0]
        (out / "notes.txt").write_text("kept")
    assert rundir.holder(out) is None and not (out / rundir.LOCK_NAME).exists()
    assert out.is_dir()  # it holds a file, so it stays
    empty = tmp_path / "empty"
    with rundir.claim(empty):
        pass
    assert not empty.exists()  # claiming made it, and nothing was written: it is removed again


# --- resuming ---------------------------------------------------------------------------------


def test_flags_given_with_resume_save_learning_settings_only(tmp_path, capsys):
    run = tmp_path / "run"  # without rollout workers, so that --vector async may be given
    assert (
        train_main([*FAST, "--rollout-workers", "0", "--total-steps", "128", "--out", str(run)])
        == 0
    )
    assert (
        train_main(
            [
                "--resume",
                str(run),
                "--total-steps",
                "256",
                "--no-quiet",
                "--log-interval",
                "1",
                "--torch-threads",
                "2",
                "--vector",
                "async",
            ]
        )
        == 0
    )
    assert "update      4" in capsys.readouterr().out  # the flags applied to that invocation
    saved = TrainConfig.load(run / "config.toml")
    assert saved.total_steps == 256  # a learning setting: saved
    assert (saved.quiet, saved.log_interval, saved.torch_threads, saved.vector) == (
        True,
        1000,
        0,
        "sync",
    )  # run-time settings: as the run started (torch_threads 0: chosen for the machine)
    assert TrainConfig.runtime_fields() == [
        "vector",
        "device",
        "torch_threads",
        "log_interval",
        "quiet",
    ]


def test_a_finished_run_is_resumed_only_with_a_larger_budget(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = snapshot(run)
    for flags in [[], ["--total-steps", "128"], ["--total-steps", "64"]]:
        message = usage_error(["--resume", str(run), *flags], capsys)
        assert message == (
            f"--resume {run}: the run is finished: it spent its budget at 128 "
            "steps; resume it with a total_steps above 128 (--total-steps)"
        )
    assert snapshot(run) == before and sorted(os.listdir(run)) == sorted(before)  # no events file
    assert train_main(["--resume", str(run), "--total-steps", "192"]) == 0


def test_a_solved_run_is_finished_too(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "stop_reason": "solved", "steps": 64}))
    message = usage_error(["--resume", str(run)], capsys)
    assert "the run is finished: it solved its task at 64 steps" in message
    assert "above 128" in message  # its budget, not the steps it took


# --- config.toml and the run directory ---------------------------------------------------------


def test_config_toml_has_no_out_so_it_cannot_point_back_at_its_run(
    finished_run, tmp_path, monkeypatch
):
    assert "out =" not in (finished_run / "config.toml").read_text()
    before = snapshot(finished_run)
    monkeypatch.chdir(tmp_path)
    assert (
        train_main(
            ["--config", str(finished_run / "config.toml"), "--seed", "2", "--total-steps", "64"]
        )
        == 0
    )
    assert (tmp_path / "runs" / "CartPole-v1-reinforce-seed2" / "summary.json").is_file()
    # An older config.toml, which saved its run's absolute path: --force must not reach it.
    old = tmp_path / "old.toml"
    old.write_text((finished_run / "config.toml").read_text() + f'out = "{finished_run}"\n')
    assert train_main(["--config", str(old), "--total-steps", "64", "--force"]) == 0
    assert (tmp_path / "runs" / "CartPole-v1-reinforce-seed1" / "summary.json").is_file()
    assert snapshot(finished_run) == before


def test_an_env_alias_is_resolved_before_the_run_directory_is_chosen(
    finished_run, tmp_path, monkeypatch, capsys
):
    assert TrainConfig(env_id="LunarLander-v2").resolved_out() == Path(
        "runs/LunarLander-v3-reinforce-seed1"
    )
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "LunarLander-v3-reinforce-seed1"
    run.mkdir(parents=True)
    (run / "config.toml").write_text("")
    message = usage_error(["--env", "LunarLander-v2", "--total-steps", "64"], capsys)
    assert message.startswith("--out runs/LunarLander-v3-reinforce-seed1 already holds a run")
