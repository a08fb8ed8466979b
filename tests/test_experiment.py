"""``python -m pylander.experiment`` on CartPole with tiny budgets: a killed experiment loses no
finished seed, a rerun skips finished seeds, the table, JSON and curve are written, and bad
input is a usage error."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pylander import aggregate, experiment

TRAIN = [
    "--env",
    "CartPole-v1",
    "--num-envs",
    "4",
    "--num-steps",
    "32",
    "--total-steps",
    "512",
    "--eval-episodes",
    "2",
    "--checkpoint-interval",
    "2",
]
ENV = {**os.environ, "PYLANDER_NO_TQDM": "1", "OMP_NUM_THREADS": "1"}


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = experiment.main(argv)
    return code, out.getvalue()


def summaries(out: Path) -> dict[str, tuple[int, str]]:
    """The finished seeds' summary.json: (mtime, text) by run directory."""
    found = {
        p.parent.name: (p.stat().st_mtime_ns, p.read_text()) for p in out.glob("seed*/summary.json")
    }
    return {name: s for name, s in found.items() if '"stop_reason": "interrupted"' not in s[1]}


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> dict:
    """Start an experiment, SIGKILL it once a seed has finished, rerun it, then rerun again."""
    out = tmp_path_factory.mktemp("experiment") / "exp"
    argv = ["--seeds", "1", "2", "3", "--jobs", "2", "--out", str(out), "--", *TRAIN]
    parent = subprocess.Popen(
        [sys.executable, "-m", "pylander.experiment", *argv],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not summaries(out) and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.1)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    at_kill = summaries(out)
    assert at_kill, "no seed finished before the kill"
    resumed = run(argv)
    after_rerun = summaries(out)
    again = run(argv)
    return {
        "out": out,
        "argv": argv,
        "at_kill": at_kill,
        "resumed": resumed,
        "after_rerun": after_rerun,
        "again": again,
    }


def test_a_killed_experiment_loses_no_finished_seed(experiment_dir):
    at_kill, after = experiment_dir["at_kill"], experiment_dir["after_rerun"]
    assert {name: after[name] for name in at_kill} == at_kill  # untouched: not run again
    assert set(after) == {"seed1", "seed2", "seed3"}
    code, printed = experiment_dir["resumed"]
    assert code == 0 and "finished already, skipped" in printed


def test_a_rerun_skips_every_finished_seed(experiment_dir):
    code, printed = experiment_dir["again"]
    assert code == 0 and "seeds 1 2 3: finished already, skipped" in printed
    assert "started" not in printed and "resumed" not in printed
    assert summaries(experiment_dir["out"]) == experiment_dir["after_rerun"]


def test_it_writes_the_table_the_json_and_the_curve(experiment_dir):
    out = experiment_dir["out"]
    table = (out / "results.md").read_text()
    assert table.startswith("| seed | solved | env steps | final evaluation | seconds |")
    for seed in (1, 2, 3):
        assert f"\n| {seed} | no | 512 | " in table
    assert "solved 0/3. Env steps" in table and "median 512, worst 512" in table
    assert table.strip() in experiment_dir["again"][1]  # and prints it
    results = json.loads((out / "results.json").read_text())
    assert results["summary"]["finished"] == 3 and len(results["runs"]) == 3
    curve = results["curve"]
    assert len(curve["steps"]) == aggregate.GRID_POINTS and len(curve["iqm_ci"][0]) == 50
    assert all(
        lo <= m <= hi
        for lo, m, hi in zip(*[curve["mean_ci"][0], curve["mean"], curve["mean_ci"][1]])
    )
    assert (out / "curve.png").stat().st_size > 10_000


def test_other_settings_in_the_same_folder_are_refused(experiment_dir, capsys):
    argv = [*experiment_dir["argv"][:-1], "1024"]  # another --total-steps
    with pytest.raises(SystemExit) as info:
        experiment.main(argv)
    assert info.value.code == 2
    assert "holds a run with other settings" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        ([], "give the seeds: --seeds S [S ...] or --num-seeds N"),
        (["--num-seeds", "0"], "give the seeds"),
        (["--seeds", "1", "2", "1"], "--seeds: each seed once, got 1 2 1"),
        (["--seeds", "1", "--jobs", "0"], "--jobs must be positive, got 0"),
        (["--seeds", "1", "--num-seeds", "3"], "not allowed with argument"),
        (["--seeds", "1", "--", "--seed", "4"], "--seed is the experiment's to give"),
    ],
)
def test_bad_input_is_a_usage_error_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "exp"
    with pytest.raises(SystemExit) as info:
        experiment.main(
            [*argv, "--out", str(out)]
            if "--" not in argv
            else [*argv[: argv.index("--")], "--out", str(out), *argv[argv.index("--") :]]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "python -m pylander.experiment: error: " in err and message in err, err
    assert not out.exists()


def test_the_curve_interpolates_runs_onto_one_grid_and_takes_their_iqm():
    # Two runs seen at different steps; the one that stopped early holds its last value.
    grid, values = aggregate.common_grid(
        [
            (np.array([0.0, 100.0]), np.array([0.0, 100.0])),
            (np.array([0.0, 50.0]), np.array([10.0, 20.0])),
        ]
    )
    assert grid[0] == 0 and grid[-1] == 100
    np.testing.assert_allclose(values[0], grid)
    assert values[1][-1] == 20.0
    runs = np.array([[1.0], [2.0], [3.0], [100.0]])
    assert aggregate.iqm(runs, axis=0)[0] == 2.5  # the middle half: 2 and 3
    metrics = pytest.importorskip("rliable.metrics")
    assert aggregate.iqm(runs, axis=0)[0] == metrics.aggregate_iqm(runs[:, 0])


def test_curve_intervals_repeat_and_leave_numpys_global_generator_alone():
    values = np.random.default_rng(3).normal(size=(10, 5)) * 50
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    first = aggregate.iqm_intervals(values, 200)
    assert np.random.random() == before  # as if the intervals had drawn nothing
    second = aggregate.iqm_intervals(values, 200)
    for a, b in zip(first[:3], second[:3]):
        assert np.array_equal(a, b)
    assert (first[1] <= first[0]).all() and (first[0] <= first[2]).all()
