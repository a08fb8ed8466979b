"""The command lines reject bad values with argparse-style usage errors, before writing anything.

Bad settings exit with status 2 and ``usage: ...`` plus ``<prog>: error: <what is wrong>`` on
stderr, never a traceback; a bad checkpoint given to ``python -m pylander.evaluate`` prints
``error: ...`` and exits non-zero.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pylander.evaluate import main as evaluate_main
from pylander.train import main as train_main

from conftest import CLI_FAST as FAST
from conftest import SUBPROCESS_ENV, usage_error


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
    (["--rollout-workers", "1", "--vector", "split"], "they need --vector sync, got 'split'"),
    (["--rollout-workers", "0", "--collect-ahead"], "collect_ahead needs rollout workers"),
    (["--rollout-workers", "1", "--algo", "notebook"], "rollout_workers needs --algo reinforce"),
    (["--rollout-workers", "5"], "rollout_workers must be in [0, num_envs=4], got 5"),
    (["--rollout-workers", "-1"], "rollout_workers must be in [0, num_envs=4], got -1"),
    (["--device", "tpu"], "argument --device: invalid choice"),
    (["--seed", "-1"], "seed must be in [0, 2**63), got -1"),
    (["--procs", "0"], "--procs must be >= 1, got 0"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--env", "NoSuchEnv-v0"], "--env: unknown environment 'NoSuchEnv-v0'"),
    (["--env", "cartpole-v1"], "Did you mean CartPole-v0, CartPole-v1?"),
    (
        ["--env", "Pendulum-v1"],
        "Pendulum-v1 has a Box action space; pylander trains categorical "
        "policies and needs a Discrete one",
    ),
    (["--env", "MountainCarContinuous-v0"], "needs a Discrete one"),
    (["--env", "Blackjack-v1"], "needs a flat Box observation space"),
]


@pytest.mark.parametrize("flags,message", BAD_VALUES, ids=[" ".join(f) for f, _ in BAD_VALUES])
def test_bad_values_are_usage_errors_and_write_nothing(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert message in usage_error(
        [*FAST, "--total-steps", "128", "--out", str(out), *flags], capsys
    )
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
    assert (
        train_main([*FAST, "--total-steps", "128", "--seed", "9", "--out", str(run), "--force"])
        == 0
    )
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
    for out, reason in [
        (a_file / "run", "Not a directory"),
        (a_file, "File exists"),
        (Path("/proc/pylander-test-run"), ""),
    ]:
        message = usage_error([*FAST, "--total-steps", "128", "--out", str(out)], capsys)
        assert f"--out {out} is not writable" in message and reason in message, message
    assert a_file.read_text() == "not a directory"


def test_resume_usage_errors(finished_run, tmp_path, capsys):
    missing = tmp_path / "missing"
    assert "no run there (no config.toml)" in usage_error(["--resume", str(missing)], capsys)
    assert not missing.exists()
    assert "give only one" in usage_error(["--resume", str(finished_run), "--force"], capsys)
    assert "drop --out" in usage_error(
        ["--resume", str(finished_run), "--out", str(tmp_path)], capsys
    )
    assert "not --config" in usage_error(
        ["--resume", str(finished_run), "--config", str(finished_run / "config.toml")], capsys
    )
    assert "gamma must be in [0, 1]" in usage_error(
        ["--resume", str(finished_run), "--gamma", "2"], capsys
    )
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


CONFIG_TYPES = [
    ('total_steps = "50000"', "total_steps must be an integer, got '50000' (str)"),
    ("total_steps = 5.5", "total_steps must be an integer, got 5.5 (float)"),
    ("hidden_sizes = 64", "hidden_sizes must be a list of integers, got 64 (int)"),
    ("hidden_sizes = [64, true]", "hidden_sizes must be a list of integers, got [64, True] (list)"),
    ("env_id = 5", "env_id must be a string, got 5 (int)"),
    ('normalize_advantages = "no"', "normalize_advantages must be true or false, got 'no' (str)"),
    ("seed = true", "seed must be an integer, got True (bool)"),
    ('gamma = "0.9"', "gamma must be a number, got '0.9' (str)"),
    (
        "env_kwargs = 3",
        "env_kwargs must be a table of keyword arguments (TOML values: no null), got 3 (int)",
    ),
    ("algo = 1", "algo must be a string, got 1 (int)"),
]


@pytest.mark.parametrize("line,message", CONFIG_TYPES, ids=[line for line, _ in CONFIG_TYPES])
def test_config_values_of_the_wrong_type_are_usage_errors(tmp_path, capsys, line, message):
    path = tmp_path / "config.toml"
    path.write_text(f'env_id = "CartPole-v1"\n{line}\n' if "env_id" not in line else line)
    assert (
        usage_error(["--config", str(path), "--out", str(tmp_path / "run")], capsys)
        == f"config {path}: {message}"
    )
    assert not (tmp_path / "run").exists()


def test_config_types_in_python():
    from pylander.config import TrainConfig

    with pytest.raises(ValueError, match="seed must be an integer, got True"):
        TrainConfig(seed=True)
    config = TrainConfig(gamma=1, total_steps=5e4, out=Path("runs/x"))
    assert (config.gamma, config.total_steps, config.out) == (1.0, 50_000, "runs/x")
    assert isinstance(config.gamma, float) and isinstance(config.total_steps, int)
    config.quiet = "yes"  # set after construction: validate() checks the types too
    with pytest.raises(ValueError, match="quiet must be true or false, got 'yes'"):
        config.validate()


@pytest.mark.parametrize("algo", ["notebook", "seed"])
def test_a_single_process_algorithm_is_refused_before_launching(tmp_path, capsys, algo):
    out = tmp_path / "run"
    message = usage_error([*FAST, "--algo", algo, "--procs", "2", "--out", str(out)], capsys)
    assert message == "--algo notebook trains in a single process; run it without --procs/torchrun"
    assert not out.exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_a_missing_gpu_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert "torch sees no CUDA device" in usage_error(
        [*FAST, "--device", "cuda", "--out", str(out)], capsys
    )
    assert not out.exists()


def test_version_and_flag_groups(capsys, monkeypatch):
    import pylander

    monkeypatch.setenv("COLUMNS", "1000")  # one line per flag's help

    with pytest.raises(SystemExit):
        train_main(["--version"])
    assert capsys.readouterr().out == f"pylander {pylander.__version__}\n"
    with pytest.raises(SystemExit):
        train_main(["--help"])
    text = capsys.readouterr().out
    text = text[text.index("\nrun:\n") :]  # the groups, after the usage line
    order = [
        "run:",
        "--config",
        "--resume",
        "--seed",
        "--device",
        "environments:",
        "--env",
        "--env-kwargs",
        "--num-envs",
        "policy gradient:",
        "--gamma",
        "--alpha",
        "evaluation, logging, checkpoints:",
        "--eval-episodes",
        "--quiet",
    ]
    where = [
        re.search(f"\n{item}\n" if item.endswith(":") else f"\n  {item}[ ,\n]", text).start()
        for item in order
    ]
    assert where == sorted(where), text
    resume_help = " ".join(text[text.index("--resume") : text.index("--force")].split())
    assert "except --vector, --device, --torch-threads, --log-interval, --quiet" in resume_help


def test_env_kwargs_values_are_toml_or_json_else_strings(capsys):
    from pylander.train import env_kwarg

    cases = {
        "n=8": 8,
        "on=true": True,
        "x=0.5": 0.5,
        "l=[1, 2]": [1, 2],
        's="a b"': "a b",
        "w=hello": "hello",
        "e=": "",
        't={"k": 1}': {"k": 1},
        "d=1979-05-27": "1979-05-27",
        "k= 3 ": 3,
    }
    for text, value in cases.items():
        assert env_kwarg(text) == (text.split("=")[0], value), text
    assert "expected KEY=VALUE, got 'oops'" in usage_error(["--env-kwargs", "oops"], capsys)
    assert (
        "env_kwargs must be a table of keyword arguments (TOML values: no null), got "
        "{'n': None}" in usage_error(["--env-kwargs", "n=null"], capsys)
    )
    message = usage_error(["--env", "CartPole-v1", "--env-kwargs", "nope=1"], capsys)
    assert message.startswith("--env: CartPole-v1 cannot be created with --env-kwargs {'nope': 1}")
    assert "--env: cannot import module 'no_such_module'" in usage_error(
        ["--env", "no_such_module:Nothing-v0"], capsys
    )


CORRIDOR = '''
"""A test env: every step earns 1 and an episode lasts `length` steps, whatever the policy."""
import gymnasium as gym
import numpy as np


class Corridor(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, length=5, render_mode=None):
        self.length, self.render_mode, self.t = length, render_mode, 0
        self.observation_space = gym.spaces.Box(0.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)

    def obs(self):
        return np.array([self.t / self.length, 1.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.obs(), {}

    def step(self, action):
        self.t += 1
        return self.obs(), 1.0, self.t >= self.length, False, {}

    def render(self):
        return np.zeros((16, 16, 3), np.uint8)


gym.register("PylanderCorridor-v0", entry_point=Corridor)
'''


@pytest.fixture(scope="module")
def corridor_module(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("envs")
    (folder / "pylander_test_corridor.py").write_text(CORRIDOR)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_a_custom_env_and_its_kwargs_are_saved_and_rebuilt(corridor_module, tmp_path, capsys):
    from pylander.checkpoint import load_checkpoint
    from pylander.config import TrainConfig

    env = "pylander_test_corridor:PylanderCorridor-v0"
    out = tmp_path / "run"
    assert (
        train_main(
            [
                *FAST,
                "--env",
                env,
                "--env-kwargs",
                "length=7",
                "--total-steps",
                "128",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["train_mean_return"] == summary["eval_mean_return"] == 7.0  # length 7 it was
    saved = TrainConfig.load(out / "config.toml")
    assert (saved.env_id, saved.env_kwargs) == (env, {"length": 7})
    assert load_checkpoint(out / "best.pt")["config"]["env_kwargs"] == {"length": 7}
    # A fresh process rebuilds the env from the checkpoint alone (given the module's folder).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pylander.evaluate",
            str(out),
            "--episodes",
            "3",
            "--json",
            "--video",
            str(tmp_path / "v.gif"),
        ],
        cwd=tmp_path,
        env={
            **SUBPROCESS_ENV,
            "PYTHONPATH": os.pathsep.join([str(corridor_module), os.environ.get("PYTHONPATH", "")]),
        },
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert (result["mean"], result["video_return"]) == (7.0, 7.0)


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


VIDEO_ERRORS = [
    ("v.avi", "--video must end in .gif or .mp4"),
    ("missing/v.gif", "the folder {tmp}/missing does not exist"),
    ("a-file/v.gif", "the folder {tmp}/a-file is not a folder"),
    ("folder.gif", "is a directory"),
    ("v.mp4", "writing .mp4 needs imageio-ffmpeg (pip install imageio-ffmpeg)"),
]


@pytest.mark.parametrize("name,message", VIDEO_ERRORS, ids=[n for n, _ in VIDEO_ERRORS])
def test_evaluate_checks_the_video_path_before_evaluating(
    finished_run, tmp_path, monkeypatch, capsys, name, message
):
    import pylander.evaluate

    (tmp_path / "a-file").write_text("")
    (tmp_path / "folder.gif").mkdir()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # as if it were not installed
    monkeypatch.setattr(pylander.evaluate, "evaluate", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(SystemExit) as info:
        evaluate_main([str(finished_run), "--video", str(tmp_path / name)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message.format(tmp=tmp_path) in err, err


def test_evaluate_takes_a_run_directory_and_a_stochastic_video(finished_run, tmp_path, capsys):
    assert evaluate_main([str(finished_run), "--episodes", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 2
    only_latest = tmp_path / "run"
    only_latest.mkdir()
    (only_latest / "checkpoint.pt").write_bytes((finished_run / "checkpoint.pt").read_bytes())
    assert (
        evaluate_main(
            [
                str(only_latest),
                "--episodes",
                "1",
                "--stochastic",
                "--json",
                "--video",
                str(tmp_path / "v.gif"),
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["video"] == str(tmp_path / "v.gif")
    assert (tmp_path / "v.gif").stat().st_size > 0
    assert evaluate_main([str(tmp_path)]) == 2
    assert "with no best.pt or checkpoint.pt in it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--episodes EPISODES evaluation episodes to play" in help_text
    assert "--seed SEED seed of the episodes" in help_text


def test_the_video_follows_stochastic_with_a_seeded_generator(tmp_path):
    import torch

    from pylander.evaluate import record_video

    def uniform(obs):  # greedy: always action 0, so CartPole falls over the same way each time
        return torch.zeros(obs.shape[0], 2)

    path = tmp_path / "v.gif"
    greedy = {record_video(uniform, "CartPole-v1", path, seed) for seed in range(3)}
    sampled = [
        record_video(uniform, "CartPole-v1", path, seed, stochastic=True) for seed in range(3)
    ]
    assert max(sampled) > max(greedy)  # random actions keep it up longer than always-left
    assert sampled == [
        record_video(uniform, "CartPole-v1", path, seed, stochastic=True) for seed in range(3)
    ]  # the same seed records the same episode


# --- the real processes ----------------------------------------------------------------------


def run_module(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_train_process_reports_bad_values_without_traceback(tmp_path):
    proc = run_module(
        "pylander.train", ["--env", "Pendulum-v1", "--out", str(tmp_path / "r")], tmp_path
    )
    assert proc.returncode == 2
    assert (
        "python -m pylander.train: error: --env: Pendulum-v1 has a Box action space" in proc.stderr
    )
    assert "Traceback" not in proc.stderr and not (tmp_path / "r").exists()


def test_evaluate_process_on_a_bad_checkpoint_prints_an_error(finished_run, tmp_path):
    data = (finished_run / "checkpoint.pt").read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    proc = run_module("pylander.evaluate", [str(truncated), "--episodes", "1"], tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.startswith(f"error: {truncated} is truncated or corrupted")
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_two_torchrun_nodes_train_one_run(tmp_path):
    """Two torchrun "nodes" on this machine, one rank each, meeting at a c10d rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    env = {**SUBPROCESS_ENV, "GLOO_SOCKET_IFNAME": "lo", "PYLANDER_DIST_TIMEOUT": "60"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "pylander-test",
                "-m",
                "pylander.train",
                *FAST,
                "--total-steps",
                "512",
                "--out",
                str(out),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        results = [node.communicate(timeout=120) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, results):
        assert node.returncode == 0, err[-3000:]
    # Both ranks trained: 2 x 4 envs x 16 steps per update. The run ended with the trainer's own
    # check that the ranks' parameters are bitwise equal (Collective.check_identical), which
    # fails the run otherwise.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 512 and summary["updates"] == 4
