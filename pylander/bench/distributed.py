"""The ``distributed`` section: ``python -m pylander.train --procs 1`` against ``--procs 2``,
as subprocesses, alternating, each timed from its ``metrics.csv`` so that start-up is left out.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
from pathlib import Path

from pylander.bench.settings import Log, Settings
from pylander.config import TrainConfig


def metrics_rate(metrics_csv: Path, skip_fraction: float = 0.2) -> float:
    """Env steps/s between a row after the first ``skip_fraction`` of the run and the last row.

    Start-up and the first updates (allocation, caches) fall before the window; the rows'
    ``seconds`` are the trainer's own wall clock, so the final evaluation is not counted either.
    """
    with open(metrics_csv, newline="") as fh:
        rows = [(int(r["steps"]), float(r["seconds"])) for r in csv.DictReader(fh)]
    if len(rows) < 3:
        raise ValueError(f"{metrics_csv} has {len(rows)} rows; at least 3 are needed")
    first = min(max(1, int(len(rows) * skip_fraction)), len(rows) - 2)
    (s0, t0), (s1, t1) = rows[first], rows[-1]
    if t1 <= t0:
        raise ValueError(f"{metrics_csv}: no time passed between rows {first} and {len(rows) - 1}")
    return (s1 - s0) / (t1 - t0)


def train_subprocess(procs: int, steps: int, out: Path, timeout_s: float) -> float:
    """Run ``python -m pylander.train --procs <procs>`` into ``out``; returns its steps/s."""
    cmd = [
        sys.executable,
        "-m",
        "pylander.train",
        "--procs",
        str(procs),
        "--rollout-workers",  # ranks, not worker processes, are what this section compares
        "0",
        "--total-steps",
        str(steps),
        "--quiet",
        "--eval-episodes",
        "1",
        "--out",
        str(out),
        "--force",
    ]
    env = {**os.environ, "PYLANDER_NO_TQDM": "1"}
    # Not from a source checkout: `python -m` would import the unbuilt tree instead.
    done = subprocess.run(
        cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(
            f"`{' '.join(cmd[1:])}` exited with {done.returncode}:\n" + "\n".join(tail)
        )
    return metrics_rate(out / "metrics.csv")


def bench_distributed(settings: Settings, workdir: Path, log: Log) -> dict:
    """``python -m pylander.train --procs 1`` and ``--procs 2`` (default settings otherwise),
    alternating, each with the same env-step budget and timed from its ``metrics.csv``."""
    defaults = TrainConfig()
    steps = settings.dist_updates * 2 * defaults.num_envs * defaults.num_steps
    one, two = [], []
    try:
        for r in range(settings.dist_rounds):
            for procs in (1, 2) if r % 2 == 0 else (2, 1):
                rate = train_subprocess(
                    procs, steps, workdir / f"procs{procs}_{r}", settings.dist_timeout_s
                )
                (one if procs == 1 else two).append(rate)
            log(
                f"  distributed round {r + 1}/{settings.dist_rounds}: 1 process {one[-1]:,.0f} "
                f"steps/s, 2 processes {two[-1]:,.0f} steps/s"
            )
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"  distributed run failed: {exc}")
        return {
            "distributed": {
                "error": str(exc),
                "procs1_steps_per_s": None,
                "procs2_steps_per_s": None,
                "ratio_2_to_1": None,
            }
        }
    return {
        "distributed": {
            "procs1_steps_per_s": statistics.median(one),
            "procs2_steps_per_s": statistics.median(two),
            "ratio_2_to_1": statistics.median(b / a for a, b in zip(one, two)),
            "cores": os.cpu_count(),
            "rounds": len(one),
            "steps_per_run": steps,
        }
    }
