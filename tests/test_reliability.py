"""Nothing trained is lost and no bad input gets past a clear error.

* checkpoints are atomic: a run SIGKILLed mid-training, or mid-save, resumes from its last
  checkpoint and ends bitwise identical (CPU) to a run never stopped; 2N steps == N + N resumed;
* SIGINT/SIGTERM save a checkpoint and summary.json and say how to resume;
* bad checkpoint files (other env/network, truncated, corrupted, not a checkpoint, a pickle that
  would run code) give a CheckpointError naming the problem and never run code;
* NaN/inf in rewards, observations, the loss or the parameters stops training naming the update,
  leaving the last good checkpoint untouched;
* native ops reject bad input that tests/test_ops.py does not already cover.

The subprocess tests run the real CLI (``python -m pylander.train``) from a temporary directory,
so they import the installed package, never the source tree.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from pylander import ops
from pylander.algorithms import NonFiniteError
from pylander.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    remove_stale_temporaries,
)
from pylander.config import TrainConfig
from pylander.evaluate import main as evaluate_main
from pylander.logger import WALL_CLOCK
from pylander.train import main as train_main
from pylander.trainer import TrainingInterrupted, train

from conftest import CLI_FAST, SUBPROCESS_ENV

# The CLI tests' fast run with a checkpoint every 4 updates (256 steps; the last flag wins).
FAST = [*CLI_FAST, "--checkpoint-interval", "4"]
FAST_CONFIG = dict(
    env_id="CartPole-v1",
    num_envs=4,
    num_steps=16,
    checkpoint_interval=4,
    eval_episodes=2,
    log_interval=1000,
    quiet=True,
)


# --- helpers ---------------------------------------------------------------------------------


def read_metrics(path: Path, drop_seconds: bool = True) -> list[dict]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return [{k: v for k, v in r.items() if not (drop_seconds and k in WALL_CLOCK)} for r in rows]


def assert_identical(a, b, where="checkpoint"):
    """Bitwise equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(dir_a: Path, dir_b: Path) -> None:
    """Two run directories hold the same training: parameters, optimiser, RNGs, metrics."""
    for name in ["checkpoint.pt", "best.pt"]:
        a, b = load_checkpoint(dir_a / name), load_checkpoint(dir_b / name)
        assert_identical(a["algorithm"], b["algorithm"], f"{name} algorithm")
        for payload in (a, b):
            payload["trainer"]["counters"].pop("seconds")
        assert_identical(a["trainer"], b["trainer"], f"{name} trainer")
    assert read_metrics(dir_a / "metrics.csv") == read_metrics(dir_b / "metrics.csv")
    summary_a, summary_b = (json.loads((d / "summary.json").read_text()) for d in (dir_a, dir_b))
    for key in [
        "steps",
        "updates",
        "episodes",
        "eval_mean_return",
        "eval_std_return",
        "stop_reason",
    ]:
        assert summary_a[key] == summary_b[key], key


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pylander.train", *args],
        cwd=cwd,
        env=SUBPROCESS_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_update(proc: subprocess.Popen, metrics: Path, update: int, timeout=120.0) -> int:
    """Poll metrics.csv until it holds ``update``; returns the last update seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(
                f"training ended (rc {proc.returncode}) before update {update}:\n{err[-3000:]}"
            )
        try:
            lines = metrics.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        last = lines[-1].split(",")[0] if len(lines) > 1 else ""
        if last.isdigit() and int(last) >= update:
            return int(last)
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no update {update} within {timeout} s")


# --- atomic writes ---------------------------------------------------------------------------


def test_atomic_write_that_fails_midway_keeps_the_old_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write(path, lambda fh: fh.write(b"old contents"))

    def half_then_crash(fh):
        fh.write(b"new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_crash)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def save_to_a_full_disk(obj, fh, *args, **kwargs):
    """torch.save onto a disk that fills up after 100 bytes (ENOSPC from the file's write)."""

    class FullDisk(io.RawIOBase):
        written = 0

        def writable(self):
            return True

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return len(data)

    REAL_SAVE(obj, FullDisk(), *args, **kwargs)


REAL_SAVE = torch.save


def test_a_full_disk_is_one_clear_line_naming_the_file(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", save_to_a_full_disk)
    assert train_main([*FAST, "--total-steps", "1024", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    # torch raises its own RuntimeError ("unexpected pos ..."); the OSError is its context.
    assert err == f"error: cannot write {out / 'checkpoint.pt'}: No space left on device\n", err
    assert not list(out.glob(".*.tmp"))  # the partial temporary is gone


def test_torch_write_failures_become_write_errors(tmp_path):
    from pylander.checkpoint import WriteError

    def fails(message):
        def write(fh):
            raise RuntimeError(message)

        return write

    path = tmp_path / "checkpoint.pt"
    for message, reason in [
        (
            "PytorchStreamWriter failed writing file data/0: file write failed",
            "PytorchStreamWriter failed writing file data/0",
        ),
        ("[enforce fail] No space left on device", "No space left on device"),
    ]:
        with pytest.raises(WriteError) as info:
            atomic_write(path, fails(message))
        assert str(info.value).startswith(f"cannot write {path}: {reason}")
    with pytest.raises(RuntimeError, match="something else") as info:  # not a write failure
        atomic_write(path, fails("something else"))
    assert not isinstance(info.value, OSError)


def test_atomic_write_gives_normal_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    atomic_write(tmp_path / "summary.json", lambda fh: fh.write(b"{}"))
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_remove_stale_temporaries_only_removes_ours(tmp_path):
    for name in [".checkpoint.pt.abc123xy.tmp", ".best.pt.q1w2e3r4.tmp", ".notes.tmp", "keep.tmp"]:
        (tmp_path / name).write_bytes(b"x")
    removed = remove_stale_temporaries(tmp_path, ["checkpoint.pt", "best.pt"])
    assert sorted(p.name for p in removed) == [
        ".best.pt.q1w2e3r4.tmp",
        ".checkpoint.pt.abc123xy.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", "keep.tmp"]


def test_train_api_creates_its_run_directory(tmp_path):
    out = tmp_path / "a" / "b"
    summary = train(TrainConfig(**FAST_CONFIG, total_steps=64, out=str(out)))
    assert summary["steps"] == 64 and (out / "checkpoint.pt").is_file()


# --- exact resume ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "collection",
    [["--rollout-workers", "0"], ["--rollout-workers", "2"], ["--collect-ahead"]],
    ids=["no-workers", "workers", "collect-ahead"],
)
def test_2n_steps_equal_n_steps_resumed_plus_n(tmp_path, collection):
    # Learning-rate annealing depends on total_steps, so it is off; N = 512 steps is 8 updates,
    # a multiple of the checkpoint interval (4 updates).
    args = [*FAST, *collection, "--no-anneal-lr", "--seed", "3"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert train_main([*args, "--total-steps", "1024", "--out", str(whole)]) == 0
    assert train_main([*args, "--total-steps", "512", "--out", str(halves)]) == 0
    first_half = load_checkpoint(halves / "checkpoint.pt")
    assert first_half["trainer"]["counters"]["steps"] == 512
    assert train_main(["--resume", str(halves), "--total-steps", "1024"]) == 0
    assert TrainConfig.load(halves / "config.toml").total_steps == 1024
    assert_same_run(whole, halves)
    assert len(read_metrics(halves / "metrics.csv")) == 16
    # Training did happen: the second half moved the parameters.
    final = load_checkpoint(halves / "checkpoint.pt")["algorithm"]["policy"]
    assert any(not torch.equal(final[k], first_half["algorithm"]["policy"][k]) for k in final)


KILL_RUN = [*FAST, "--seed", "4", "--total-steps", "6144"]  # 96 updates, checkpoint every 4


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert train_main([*KILL_RUN, "--out", str(out)]) == 0
    return out


def test_sigkill_mid_training_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = start_cli([*KILL_RUN, "--out", str(out)], cwd=tmp_path)
    wait_for_update(proc, out / "metrics.csv", 6)  # past the first checkpoint, mid-interval
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists()

    killed_at = int(read_metrics(out / "metrics.csv")[-1]["update"])
    saved = load_checkpoint(out / "checkpoint.pt", env_id="CartPole-v1")  # intact, loadable
    saved_update = saved["trainer"]["counters"]["update"]
    assert saved_update % 4 == 0 and 4 <= saved_update <= killed_at

    assert train_main(["--resume", str(out)]) == 0
    assert_same_run(uninterrupted, out)


# The real CLI in a subprocess, with torch.save replaced by one that writes half of the second
# checkpoint.pt and then SIGKILLs its own process: a kill in the middle of a save.
KILL_DURING_SAVE = r"""
import io, os, signal, sys
import torch
from pylander.train import main

real_save = torch.save

def save_then_die(obj, fh, *args, **kwargs):
    target = os.readlink(f"/proc/self/fd/{fh.fileno()}")
    update = obj["trainer"]["counters"]["update"]
    if os.path.basename(target).startswith(".checkpoint.pt.") and update == 8:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        fh.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        fh.flush()
        os.fsync(fh.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, fh, *args, **kwargs)

torch.save = save_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_sigkill_during_a_save_leaves_a_loadable_checkpoint(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, *KILL_RUN, "--out", str(out)],
        cwd=tmp_path,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    stale = list(out.glob(".checkpoint.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size > 0  # the torn write, beside the real file
    payload = load_checkpoint(out / "checkpoint.pt", env_id="CartPole-v1")
    assert payload["trainer"]["counters"]["update"] == 4  # the previous checkpoint, whole

    assert train_main(["--resume", str(out)]) == 0
    assert not list(out.glob(".*.tmp")), "the torn temporary was not cleaned up"
    assert_same_run(uninterrupted, out)


# --- SIGINT / SIGTERM ------------------------------------------------------------------------


def test_sigterm_saves_checkpoint_and_summary_and_says_how_to_resume(tmp_path):
    out = tmp_path / "run"
    proc = start_cli([*FAST, "--total-steps", "1000000", "--out", str(out)], cwd=tmp_path)
    wait_for_update(proc, out / "metrics.csv", 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    assert f"Resume with: python -m pylander.train --resume {out}" in err
    assert "interrupted by SIGTERM" in err

    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["eval_mean_return"] is None
    assert summary["train_mean_return"] > 0 and summary["episodes"] > 0  # what is known
    payload = load_checkpoint(out / "checkpoint.pt", env_id="CartPole-v1")
    counters = payload["trainer"]["counters"]
    assert counters["update"] == summary["updates"] >= 3
    assert counters["steps"] == summary["steps"] == 64 * summary["updates"]
    assert len(read_metrics(out / "metrics.csv")) == summary["updates"]

    # Resume it (with a smaller budget, to finish quickly): it continues from the saved update.
    stopped = summary["steps"]
    assert train_main(["--resume", str(out), "--total-steps", str(stopped + 128)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and summary["steps"] == stopped + 128
    assert summary["eval_episodes"] == 2
    rows = read_metrics(out / "metrics.csv")
    assert [int(r["update"]) for r in rows] == list(range(1, len(rows) + 1))


def signal_at_update(monkeypatch, update: int, signals: list[int]):
    """Make the trainer's metrics hook send ``signals`` to this process when it writes ``update``."""
    from pylander.hooks.metrics import MetricsWriter

    real_on_update = MetricsWriter.on_update

    def on_update(self, info):
        real_on_update(self, info)
        if info.update == update:
            for sig in signals:
                os.kill(os.getpid(), sig)

    monkeypatch.setattr(MetricsWriter, "on_update", on_update)


def test_sigint_saves_and_exits_cleanly(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_at_update(monkeypatch, 6, [signal.SIGINT])
    previous = signal.getsignal(signal.SIGINT)
    assert train_main([*FAST, "--total-steps", "100000", "--out", str(out)]) == 130
    assert signal.getsignal(signal.SIGINT) is previous  # handlers restored
    err = capsys.readouterr().err
    assert "interrupted by SIGINT at update 6" in err
    assert f"python -m pylander.train --resume {out}" in err
    assert json.loads((out / "summary.json").read_text())["stop_reason"] == "interrupted"
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["counters"]["update"] == 6


def test_train_api_raises_training_interrupted(tmp_path, monkeypatch):
    signal_at_update(monkeypatch, 2, [signal.SIGTERM])
    with pytest.raises(TrainingInterrupted, match="Resume with") as info:
        train(TrainConfig(**FAST_CONFIG, total_steps=100000, out=str(tmp_path / "run")))
    assert info.value.signum == signal.SIGTERM


def test_training_interrupted_survives_pickling():
    # Collective.on_main pickles exceptions to raise them on every rank.
    stop = pickle.loads(pickle.dumps(TrainingInterrupted(signal.SIGTERM, "stopped; resume so")))
    assert isinstance(stop, TrainingInterrupted) and stop.signum == signal.SIGTERM
    assert str(stop) == "stopped; resume so"


def test_second_signal_stops_at_once_keeping_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    signal_at_update(monkeypatch, 6, [signal.SIGINT, signal.SIGINT])
    assert train_main([*FAST, "--total-steps", "100000", "--out", str(out)]) == 130
    assert "interrupted at once" in capsys.readouterr().err
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["counters"]["update"] == 4
    assert not (out / "summary.json").exists()


def test_signal_during_final_evaluation_writes_summary_and_resume_evaluates(
    tmp_path, monkeypatch, capsys
):
    import pylander.run  # where the run evaluates

    out = tmp_path / "run"

    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends
        pytest.fail("the evaluation was not interrupted")

    monkeypatch.setattr(pylander.run, "evaluate", interrupted_evaluation)
    assert train_main([*FAST, "--total-steps", "256", "--out", str(out)]) == 128 + signal.SIGTERM
    assert "Resume with" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "interrupted" and summary["steps"] == 256
    monkeypatch.undo()

    assert train_main(["--resume", str(out)]) == 0  # nothing left to train: it only evaluates
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and summary["eval_episodes"] == 2
    assert len(read_metrics(out / "metrics.csv")) == 4


# --- bad checkpoints -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train_main([*FAST, "--total-steps", "256", "--out", str(out)]) == 0
    return out


MORE_STEPS = ["--total-steps", "512"]
"""Resuming ``finished_run`` needs a larger budget (a finished run is not resumed)."""


class RunsCode:
    """Unpickling this (unsafely) creates the file SENTINEL: proof that code ran."""

    sentinel = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def evil_files(tmp_path: Path) -> tuple[list[Path], Path]:
    sentinel = tmp_path / "code-ran"
    RunsCode.sentinel = str(sentinel)
    raw = tmp_path / "raw-pickle.pt"
    raw.write_bytes(pickle.dumps({"format": "pylander-checkpoint", "payload": RunsCode()}))
    zipped = tmp_path / "torch-zip.pt"
    torch.save({"format": "pylander-checkpoint", "version": 1, "x": RunsCode()}, zipped)
    assert not sentinel.exists()
    return [raw, zipped], sentinel


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    (raw, zipped), sentinel = evil_files(tmp_path)
    with pytest.raises(CheckpointError, match="not a pylander checkpoint.*not unpickled"):
        load_checkpoint(raw)
    with pytest.raises(CheckpointError, match="objects other than tensors.*could run code") as info:
        load_checkpoint(zipped)
    assert "system" in str(info.value)  # names what was refused
    assert "weights_only` set to `False`" not in str(info.value)  # no advice to load it unsafely
    assert not sentinel.exists()
    # The unsafe loader really would have run it: the test's payload is live.
    torch.load(zipped, weights_only=False)
    assert sentinel.exists()


def member_data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where a stored zip member's bytes start (its local header's extra field, which torch pads
    for alignment, can differ from the central directory's)."""
    name_len, extra_len = np.frombuffer(data, np.uint16, 2, info.header_offset + 26)
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def corrupted_copies(checkpoint: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected message fragment)."""
    data = checkpoint.read_bytes()
    cases = {}

    def make(name, content, fragment):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        cases[name] = (path, fragment)

    make("truncated-half", data[: len(data) // 2], "truncated or corrupted")
    make("truncated-tail", data[:-10], "truncated or corrupted")
    with zipfile.ZipFile(checkpoint) as archive:
        infos = archive.infolist()
    tensor = next(i for i in infos if "/data/" in i.filename and i.file_size > 100)
    flipped = bytearray(data)
    flipped[member_data_offset(data, tensor) + 50] ^= 0x01  # one bit of one parameter
    make("bit-flip", bytes(flipped), "fails its CRC check")
    start = member_data_offset(data, next(i for i in infos if i.filename.endswith("data.pkl")))
    garbled = bytearray(data)
    garbled[start + 20 : start + 60] = b"\xff" * 40
    make("garbled-pickle", bytes(garbled), "fails its CRC check")
    make("empty", b"", "empty")
    make("text", "this is not a checkpoint\n", "not a pylander checkpoint")
    make("random", np.random.default_rng(0).bytes(5000), "not a pylander checkpoint")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other-torch.pt")
    cases["other-torch"] = (tmp_path / "other-torch.pt", "not a pylander checkpoint")
    torch.save(
        {"format": "pylander-checkpoint", "version": 1, "env_id": "CartPole-v1"},
        tmp_path / "incomplete.pt",
    )
    cases["incomplete"] = (tmp_path / "incomplete.pt", "damaged")
    torch.save({"format": "pylander-checkpoint", "version": 99}, tmp_path / "future.pt")
    cases["future"] = (tmp_path / "future.pt", "version 99")
    cases["directory"] = (tmp_path, "not a file")
    cases["missing"] = (tmp_path / "nope.pt", "no checkpoint at")
    return cases


def test_bad_checkpoint_files_give_named_errors(finished_run, tmp_path):
    for name, (path, fragment) in corrupted_copies(
        finished_run / "checkpoint.pt", tmp_path
    ).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert fragment in str(info.value), (name, str(info.value))
        assert str(path) in str(info.value), name


def test_checkpoint_from_another_env_or_network_is_refused(finished_run, tmp_path, capsys):
    good = load_checkpoint(finished_run / "checkpoint.pt", env_id="CartPole-v1")
    with pytest.raises(CheckpointError, match="trained on CartPole-v1, not Acrobot-v1"):
        load_checkpoint(finished_run / "checkpoint.pt", env_id="Acrobot-v1")
    other = dict(good["architecture"], hidden_sizes=[32])
    with pytest.raises(
        CheckpointError, match=r"hidden_sizes \[64, 64\] in the checkpoint, \[32\] here"
    ):
        load_checkpoint(finished_run / "checkpoint.pt", architecture=other)

    # Through --resume (on a copy: a refused resume must not touch the run).
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for flags, fragment in [
        (["--env", "Acrobot-v1"], "trained on CartPole-v1, not Acrobot-v1"),
        (["--hidden-sizes", "32"], "holds a different network"),
        (["--baseline", "none"], "critic True in the checkpoint, False here"),
        (["--algo", "notebook", "--rollout-workers", "0"], "holds a different network"),
    ]:
        assert train_main(["--resume", str(run), *MORE_STEPS, *flags]) == 1, flags
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (flags, err)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_from_a_corrupted_checkpoint_is_a_clear_error(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    assert train_main(["--resume", str(run), *MORE_STEPS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "truncated or corrupted" in err


def test_checkpoint_state_that_does_not_fit_is_a_checkpoint_error(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    payload = load_checkpoint(run / "checkpoint.pt")
    payload["algorithm"]["sample_generator"] = torch.zeros(3, dtype=torch.uint8)
    torch.save(payload, run / "checkpoint.pt")
    assert train_main(["--resume", str(run), *MORE_STEPS]) == 1
    assert "does not fit this run" in capsys.readouterr().err


def test_evaluate_cli_rejects_bad_checkpoints(finished_run, tmp_path, capsys):
    (raw, zipped), sentinel = evil_files(tmp_path)
    cases = corrupted_copies(finished_run / "checkpoint.pt", tmp_path)
    for path in [raw, zipped, *(p for p, _ in cases.values())]:
        code = evaluate_main([str(path), "--episodes", "1"])
        err = capsys.readouterr().err
        assert code != 0 and err.startswith("error: ") and "Traceback" not in err, (path, err)
    assert not sentinel.exists()
    # A well-formed checkpoint whose policy does not fit its env.
    payload = load_checkpoint(finished_run / "checkpoint.pt")
    payload["env_id"] = "Acrobot-v1"
    torch.save(payload, tmp_path / "wrong-env.pt")
    assert evaluate_main([str(tmp_path / "wrong-env.pt"), "--episodes", "1"]) != 0
    assert "but Acrobot-v1 has 6 and 3" in capsys.readouterr().err
    # And the good one works.
    assert evaluate_main([str(finished_run / "checkpoint.pt"), "--episodes", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 1


# --- non-finite values -----------------------------------------------------------------------


class GoesNonFinite(gym.Wrapper):
    """CartPole whose rewards or observations become NaN from its ``after``-th step on."""

    def __init__(self, env, what: str, after: int):
        super().__init__(env)
        self.what, self.after, self.count = what, after, 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.count += 1
        if self.count >= self.after:
            if self.what == "reward":
                reward = float("nan")
            else:
                obs = np.full_like(obs, np.nan)
        return obs, reward, terminated, truncated, info


for _what in ["reward", "obs"]:
    gym.register(
        f"PylanderTestNaN{_what.title()}-v0",
        disable_env_checker=True,
        entry_point=lambda what=_what: GoesNonFinite(gym.make("CartPole-v1"), what, 100),
    )


@pytest.mark.parametrize("what,fragment", [("Reward", "`rewards`"), ("Obs", "`logits`")])
def test_non_finite_env_values_stop_training_naming_the_update(tmp_path, what, fragment, capsys):
    # Each env's 100th step falls in update 7 (16 steps per update); checkpoints every 2 updates.
    out = tmp_path / "run"
    args = [
        *FAST,
        "--env",
        f"PylanderTestNaN{what}-v0",
        "--checkpoint-interval",
        "2",
        "--total-steps",
        "2048",
        "--out",
        str(out),
    ]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert "non-finite values at update 7" in err and "contains NaN" in err, err
    assert fragment in err and "Traceback" not in err, err
    assert f"The last good checkpoint, {out / 'checkpoint.pt'}, is untouched" in err
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["trainer"]["counters"]["update"] == 6
    assert all(torch.isfinite(t).all() for t in payload["algorithm"]["policy"].values())
    assert not (out / "summary.json").exists()
    assert len(read_metrics(out / "metrics.csv")) == 6


# 1e30: the first update leaves huge but finite parameters, and the second update overflows:
# its float32 gradients, or already its loss, by how the CPU kernel's vector width rounds the
# per-row terms near float32's limit (AVX-512: the gradients; AVX2: the loss). 1e38: the first
# update already makes non-finite parameters.
@pytest.mark.parametrize(
    "lr,fragment",
    [
        ("1e30", r"non-finite (loss|gradient) at update 2"),
        ("1e38", "non-finite values at update 1"),
    ],
)
def test_huge_learning_rate_stops_with_a_clear_error(tmp_path, lr, fragment, capsys):
    out = tmp_path / "run"
    args = [
        *FAST,
        "--learning-rate",
        lr,
        "--no-anneal-lr",
        "--checkpoint-interval",
        "1",
        "--total-steps",
        "2048",
        "--out",
        str(out),
    ]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert re.search(fragment, err) and "Traceback" not in err, err
    if (out / "checkpoint.pt").exists():
        payload = load_checkpoint(out / "checkpoint.pt")
        assert all(torch.isfinite(t).all() for t in payload["algorithm"]["policy"].values())
    else:
        assert "No checkpoint was saved before it" in err


def test_non_finite_parameters_are_caught_by_the_update_that_made_them(tmp_path, monkeypatch):
    from pylander.algorithms.reinforce import Reinforce

    real_update = Reinforce.update

    def poisoning_update(self, rollout, *behaviour):
        stats = real_update(self, rollout, *behaviour)
        if self.updates + 1 == 3:
            with torch.no_grad():
                next(self.policy.parameters())[0, 0] = float("nan")
            from pylander.algorithms import check_parameters

            check_parameters(self.policy, self.updates + 1)
        return stats

    monkeypatch.setattr(Reinforce, "update", poisoning_update)
    out = tmp_path / "run"
    config = TrainConfig(
        **{**FAST_CONFIG, "checkpoint_interval": 2}, total_steps=1024, out=str(out)
    )
    with pytest.raises(
        NonFiniteError,
        match=r"parameter 'actor.0.weight' became non-finite at "
        r"update 3.*last good checkpoint.*is untouched",
    ):
        train(config)
    assert load_checkpoint(out / "checkpoint.pt")["trainer"]["counters"]["update"] == 2


# --- native ops: bad input that tests/test_ops.py does not cover ------------------------------

R = torch.zeros(4, 2)
D = torch.zeros(4, 2, dtype=torch.bool)
L = torch.zeros(2)
Z = torch.zeros(3, 4)
A = torch.zeros(3, dtype=torch.long)
W = torch.ones(3)

MORE_BAD_INPUTS = [
    (lambda: ops.gae(R, R, D, L, 0.9, -0.1), ValueError, "`lam` must be in [0, 1]"),
    (lambda: ops.gae(R, R, D, L, 0.9, float("nan")), ValueError, "`lam` must be in [0, 1]"),
    (lambda: ops.gae(R, R, D, L, 1.0001, 0.9), ValueError, "`gamma` must be in [0, 1]"),
    (lambda: ops.gae(R, R, D, L, float("inf"), 0.9), ValueError, "`gamma` must be in [0, 1]"),
    (lambda: ops.gae(R, R.double(), D, L, 0.9, 0.9), RuntimeError, "`values` must be Float"),
    (lambda: ops.gae(R, R, D.int(), L, 0.9, 0.9), RuntimeError, "`dones` must be Bool"),
    (lambda: ops.gae(R, R, D, L.double(), 0.9, 0.9), RuntimeError, "`last_values` must be Float"),
    (
        lambda: ops.gae(R, R, D, L[None], 0.9, 0.9),
        RuntimeError,
        "`last_values` must have shape [N]",
    ),
    (lambda: ops.gae(R[None], R, D, L, 0.9, 0.9), RuntimeError, "`rewards` must have shape [T, N]"),
    (lambda: ops.gae(R, R, D, torch.tensor([0.0, float("nan")]), 0.9, 0.9), ValueError, "NaN"),
    (lambda: ops.discounted_returns(R, D[:, :1], 0.9), RuntimeError, "`dones` must have the shape"),
    (
        lambda: ops.discounted_returns(R, D, 0.9, torch.zeros(2, 1)),
        RuntimeError,
        "`bootstrap` must have shape [N]",
    ),
    (
        lambda: ops.discounted_returns(R * float("inf"), D, 0.9),
        ValueError,
        "contains NaN or infinity",
    ),
    (lambda: ops.pg_loss(Z, A, W[:2]), RuntimeError, "one per row of `logits`"),
    (lambda: ops.pg_loss(Z, A[:, None], W), RuntimeError, "`actions` must have shape [B]"),
    (lambda: ops.pg_loss(Z, A, W[:, None]), RuntimeError, "`weights` must have shape [B]"),
    (lambda: ops.pg_loss(Z, A.float(), W), RuntimeError, "`actions` must be Long"),
    (lambda: ops.pg_loss(Z.double(), A, W), RuntimeError, "`weights` must be Double"),
    (lambda: ops.pg_loss(Z, A + 1000, W), ValueError, "`actions` must lie in [0, 4)"),
    (lambda: ops.pg_loss(Z, A, W * float("inf")), ValueError, "contains NaN or infinity"),
    (lambda: ops.pg_loss(Z, A, W, "Mean"), ValueError, "`reduction` must be"),
    (lambda: ops.sample_categorical(torch.zeros(3, 0)), RuntimeError, "at least one action"),
    (lambda: ops.sample_categorical(Z[0]), RuntimeError, "`logits` must have shape [B, A]"),
    (lambda: ops.sample_categorical(Z.half()), RuntimeError, "`logits` must be float32 or float64"),
    (lambda: ops.sample_categorical(torch.full((2, 3), -float("inf"))), ValueError, "contains NaN"),
]


@pytest.mark.parametrize("case", range(len(MORE_BAD_INPUTS)))
def test_more_bad_op_inputs_raise_named_errors(case):
    call, error, fragment = MORE_BAD_INPUTS[case]
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


def test_ops_accept_non_contiguous_inputs():
    base = torch.randn(8, 6, dtype=torch.float64)
    rewards = base[:, ::2]  # strided view
    dones = torch.zeros(8, 6, dtype=torch.bool)[:, ::2]
    dones[3] = True
    want = ops.discounted_returns(rewards.contiguous(), dones.contiguous(), 0.9)
    torch.testing.assert_close(ops.discounted_returns(rewards, dones, 0.9), want)
    logits = torch.randn(4, 10, dtype=torch.float64).t()  # [10, 4], transposed
    actions = torch.randint(0, 4, (10,))
    weights = torch.randn(20, dtype=torch.float64)[::2]
    got = ops.pg_loss(logits, actions, weights)
    want = ops.pg_loss(logits.contiguous(), actions, weights.contiguous())
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
