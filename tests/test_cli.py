"""The command lines reject bad values with argparse-style usage errors, before writing anything.

Bad settings exit with status 2 and ``usage: ...`` plus ``<prog>: error: <what is wrong>`` on
stderr, never a traceback; a bad checkpoint given to ``python -m pylander.evaluate`` prints
``error: ...`` and exits non-zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pylander.evaluate import main as evaluate_main
from pylander.train import main as train_main

FAST = ["--env", "CartPole-v1", "--num-envs", "4", "--num-steps", "16", "--checkpoint-interval", "2",
        "--eval-episodes", "2", "--log-interval", "1000", "--quiet"]
SUBPROCESS_ENV = {**os.environ, "PYLANDER_NO_TQDM": "1", "OMP_NUM_THREADS": "1"}


def usage_error(argv: list[str], capsys) -> str:
    """Run the train CLI in-process; it must exit 2 with an argparse-style message."""
    with pytest.raises(SystemExit) as info:
        train_main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m pylander.train"), err
    assert "python -m pylander.train: error: " in err and "Traceback" not in err, err
    return err.split("error: ", 1)[1].strip()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert train_main([*FAST, "--total-steps", "128", "--out", str(out)]) == 0
    return out


BAD_VALUES = [
    (["--total-steps", "0"], "total_steps must be positive, got 0"),
    (["--total-steps", "-5"], "total_steps must be positive, got -5"),
    (["--total-steps", "1e6"], "argument --total-steps: invalid int value: '1e6'"),
    (["--total-steps", "lots"], "argument --total-steps: invalid int value"),
    (["--num-envs", "0"], "num_envs must be positive"),
    (["--num-steps", "-1"], "num_steps must be positive"),
    (["--checkpoint-interval", "0"], "checkpoint_interval must be positive"),
    (["--eval-episodes", "0"], "eval_episodes must be positive"),
    (["--gamma", "1.5"], "gamma must be in [0, 1], got 1.5"),
    (["--gamma", "-0.1"], "gamma must be in [0, 1], got -0.1"),
    (["--gamma", "nan"], "gamma must be in [0, 1], got nan"),
    (["--gae-lambda", "1.01"], "gae_lambda must be in [0, 1]"),
    (["--learning-rate", "0"], "learning_rate must be a positive number"),
    (["--learning-rate", "inf"], "learning_rate must be a positive number"),
    (["--max-grad-norm", "-1"], "max_grad_norm must be a positive number"),
    (["--ent-coef", "-0.5"], "ent_coef must be >= 0"),
    (["--hidden-sizes", "64", "0"], "hidden_sizes must be positive layer widths"),
    (["--minibatches", "1000"], "minibatches must not exceed num_envs * num_steps"),
    (["--algo", "ppo"], "argument --algo: invalid choice: 'ppo'"),
    (["--baseline", "critic"], "argument --baseline: invalid choice: 'critic'"),
    (["--vector", "threads"], "argument --vector: invalid choice"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--seed", "-1"], "seed must be in [0, 2**63), got -1"),
    (["--procs", "0"], "--procs must be >= 1, got 0"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--env", "NoSuchEnv-v0"], "--env: unknown environment 'NoSuchEnv-v0'"),
    (["--env", "cartpole-v1"], "Did you mean CartPole-v0, CartPole-v1?"),
    (["--env", "Pendulum-v1"], "Pendulum-v1 has a Box action space; pylander trains categorical "
                               "policies and needs a Discrete one"),
    (["--env", "MountainCarContinuous-v0"], "needs a Discrete one"),
    (["--env", "Blackjack-v1"], "needs a flat Box observation space"),
]


@pytest.mark.parametrize("flags,message", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_bad_values_are_usage_errors_and_write_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in usage_error([*FAST, "--total-steps", "128", "--out", str(out), *flags], capsys)
    assert not out.exists()


def test_out_holding_another_run_needs_resume_or_force(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    message = usage_error([*FAST, "--total-steps", "128", "--out", str(run)], capsys)
    assert f"--out {run} already holds a run" in message
    assert f"use --resume {run} to continue it, --force to replace it" in message
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # untouched

    # --force starts afresh there (another seed, so the files really change).
    assert train_main([*FAST, "--total-steps", "128", "--seed", "9", "--out", str(run), "--force"]) == 0
    assert json.loads((run / "summary.json").read_text())["seed"] == 9
    # A directory holding unrelated files only is fine.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert train_main([*FAST, "--total-steps", "64", "--out", str(other)]) == 0
    assert (other / "notes.txt").read_text() == "mine"


def test_unwritable_out_is_a_usage_error(tmp_path, capsys):
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a directory")
    # Tests run as root, for whom chmod does not make a directory unwritable.
    for out, reason in [(a_file / "run", "Not a directory"), (a_file, "File exists"),
                        (Path("/proc/pylander-test-run"), "")]:
        message = usage_error([*FAST, "--total-steps", "128", "--out", str(out)], capsys)
        assert f"--out {out} is not writable" in message and reason in message, message
    assert a_file.read_text() == "not a directory"


def test_resume_usage_errors(finished_run, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert "no run there (no config.toml)" in usage_error(["--resume", str(missing)], capsys)
    assert not missing.exists()
    assert "give only one" in usage_error(["--resume", str(finished_run), "--force"], capsys)
    assert "drop --out" in usage_error(["--resume", str(finished_run), "--out", str(tmp_path)], capsys)
    assert "not --config" in usage_error(
        ["--resume", str(finished_run), "--config", str(finished_run / "config.toml")], capsys)
    assert "gamma must be in [0, 1]" in usage_error(["--resume", str(finished_run), "--gamma", "2"],
                                                    capsys)
    # A run stopped before its first checkpoint.
    early = tmp_path / "early"
    early.mkdir()
    (early / "config.toml").write_text((finished_run / "config.toml").read_text())
    message = usage_error(["--resume", str(early)], capsys)
    assert "no checkpoint.pt there to resume from" in message and "--force" in message


def test_bad_config_files_are_usage_errors(tmp_path, capsys):
    missing = tmp_path / "missing.toml"
    assert "cannot read config" in usage_error(["--config", str(missing)], capsys)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('env_id = "CartPole-v1"\nlearning_rat = 0.1\n')
    assert "unknown config keys: learning_rat" in usage_error(["--config", str(unknown)], capsys)
    broken = tmp_path / "broken.toml"
    broken.write_text("gamma = = 0.9\n")
    assert "cannot read config" in usage_error(["--config", str(broken)], capsys)
    bad_value = tmp_path / "bad-value.toml"
    bad_value.write_text("gamma = 3.0\n")
    assert "gamma must be in [0, 1], got 3.0" in usage_error(["--config", str(bad_value)], capsys)


def test_resume_via_same_out_is_accepted(finished_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for path in finished_run.iterdir():
        (run / path.name).write_bytes(path.read_bytes())
    assert train_main(["--resume", str(run), "--out", str(run), "--total-steps", "192"]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 192


def test_evaluate_cli_usage_errors(finished_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(finished_run / "checkpoint.pt"), "--episodes", "0"])
    assert info.value.code == 2 and "--episodes must be positive" in capsys.readouterr().err
    assert evaluate_main([str(tmp_path / "nope.pt")]) != 0
    assert capsys.readouterr().err == f"error: no checkpoint at {tmp_path / 'nope.pt'}\n"
    code = evaluate_main([str(finished_run / "checkpoint.pt"), "--episodes", "1", "--video",
                          str(tmp_path / "v.avi")])
    assert code != 0 and "--video must end in .gif or .mp4" in capsys.readouterr().err


# --- the real processes ----------------------------------------------------------------------


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=SUBPROCESS_ENV,
                          capture_output=True, text=True, timeout=300)


def test_train_process_reports_bad_values_without_traceback(tmp_path):
    proc = run_module("pylander.train", ["--env", "Pendulum-v1", "--out", str(tmp_path / "r")],
                      tmp_path)
    assert proc.returncode == 2
    assert "python -m pylander.train: error: --env: Pendulum-v1 has a Box action space" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_evaluate_process_on_a_bad_checkpoint_prints_an_error(finished_run, tmp_path):
    data = (finished_run / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    proc = run_module("pylander.evaluate", [str(truncated), "--episodes", "1"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"error: {truncated} is truncated or corrupted")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
