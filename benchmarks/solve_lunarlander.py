"""Acceptance run: train LunarLander-v3 with the default settings on several seeds.

    python benchmarks/solve_lunarlander.py --seeds 1 2 3 4 5 [--out runs/acceptance] [-- EXTRA FLAGS]

Runs ``python -m pylander.train --seed S --stop-when-solved`` for each seed, one after the other
(so each has the whole machine), and prints a markdown table of steps, wall-clock seconds and the
greedy evaluation for each, plus the median. The table in README.md came from this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--out", type=Path, default=Path("runs/acceptance"))
    parser.add_argument("extra", nargs="*", help="more flags for pylander.train (after --)")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        cmd = [
            sys.executable,
            "-m",
            "pylander.train",
            "--seed",
            str(seed),
            "--stop-when-solved",
            "--out",
            str(out),
            "--force",
            "--quiet",
            *args.extra,
        ]
        print("$", " ".join(cmd[1:]), flush=True)
        started = time.perf_counter()
        subprocess.run(cmd, check=False)
        summary = json.loads((out / "summary.json").read_text())
        summary["command_seconds"] = time.perf_counter() - started
        rows.append(summary)
        print(
            json.dumps(
                {k: summary[k] for k in ["seed", "steps", "seconds", "eval_mean_return", "solved"]}
            ),
            flush=True,
        )
    print(
        f"\nmachine: {platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    # training s: summary.json's seconds (the loop); command s: the whole command, start-up and
    # the final 100-episode evaluation included.
    print(
        "\n| seed | solved | env steps | training s | command s | steps/s | greedy eval (100 ep.) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {'yes' if r['solved'] else 'no'} | {r['steps']:,} | {r['seconds']:.0f} | "
            f"{r['command_seconds']:.0f} | {r['steps_per_second']:,.0f} | "
            f"{r['eval_mean_return']:.1f} +- {r['eval_std_return']:.1f} |"
        )
    solved = [r for r in rows if r["solved"]]
    print(
        f"\nsolved {len(solved)}/{len(rows)}; median over all seeds: "
        f"{statistics.median(r['steps'] for r in rows):,.0f} steps, "
        f"{statistics.median(r['seconds'] for r in rows):.0f} s training, "
        f"{statistics.median(r['command_seconds'] for r in rows):.0f} s per command"
    )
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
