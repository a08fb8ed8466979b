"""Trainer steps/s against env-only stepping, for several code versions and vector modes.

    python benchmarks/throughput.py --impl before=/tmp/before --impl after=. \
        --case sync --case split --case sync@0 --updates 40 --rounds 3

Every (impl, case) runs ``rounds`` times in a fresh subprocess, the subprocesses interleaved
round by round. Inside one, each of the trainer's updates (``pylander.trainer.train``, all of its
per-update work counted) is followed by stepping a separate ``SyncVectorEnv`` of the same envs
with random actions for as many steps, so both see the same machine load; the result is the ratio
of the two rates. ``impl`` is a folder holding a ``pylander`` package (its Python files; the
compiled module comes from the installed copy). A case is a ``--vector`` mode, with ``@CPUS``
to pin the subprocess to those CPUs with ``taskset`` (``sync@0``: one core).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def child(updates: int, vector: str, warmup: int) -> dict:
    """One run in this process: the trainer, interleaved update by update with env-only steps."""
    import numpy as np
    import torch

    from pylander.config import TrainConfig
    from pylander.envs import make_vector_env
    from pylander.trainer import train

    torch.set_num_threads(1)
    out = tempfile.mkdtemp(prefix="throughput-")
    # No rollout workers (older versions have none): they would go on collecting while the
    # env-only blocks run (the `workers` section of `python -m pylander.bench` measures them).
    no_workers = {"rollout_workers": 0} if hasattr(TrainConfig, "rollout_workers") else {}
    config = TrainConfig(
        vector=vector,
        **no_workers,
        quiet=True,
        eval_episodes=1,
        out=out,
        checkpoint_interval=10_000,
    )
    config.total_steps = updates * config.num_envs * config.num_steps
    envs = make_vector_env(config.env_id, config.num_envs, "sync")
    envs.reset(seed=123)
    rng = np.random.default_rng(0)
    trainer_s, env_s = [], []  # (wall, this process's CPU) seconds per update
    mark = [(0.0, 0.0)]

    def clocks() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def after_update(info) -> None:
        now = clocks()
        trainer_s.append([b - a for a, b in zip(mark[0], now)])
        for row in rng.integers(0, 4, size=(config.num_steps, config.num_envs)):
            envs.step(row)
        mark[0] = clocks()
        env_s.append([b - a for a, b in zip(now, mark[0])])

    mark[0] = clocks()
    train(config, callbacks=[after_update])
    envs.close()
    # The first update also pays for building the algorithm; the first few warm caches up.
    (trainer, trainer_cpu), (env, env_cpu) = (
        map(sum, zip(*s[warmup:])) for s in (trainer_s, env_s)
    )
    steps = (len(trainer_s) - warmup) * config.num_envs * config.num_steps
    # cpu_ratio: the same ratio in this process's CPU time, which other load on the machine
    # disturbs far less; with --vector split it leaves out the worker (it counts the main
    # process, the one that waits for the other).
    return {
        "trainer_steps_per_s": steps / trainer,
        "env_steps_per_s": steps / env,
        "ratio": env / trainer,
        "cpu_ratio": env_cpu / trainer_cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", action="append", default=[], help="NAME=FOLDER")
    parser.add_argument("--case", action="append", default=[], help="MODE or MODE@CPUS")
    parser.add_argument("--updates", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the vector mode, in a subprocess
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.updates, args.child, args.warmup)))
        return
    impls = dict(item.split("=", 1) for item in args.impl or ["current=."])
    runs = [(name, case) for name in impls for case in args.case or ["sync"]]
    results: dict[tuple[str, str], list[dict]] = {run: [] for run in runs}
    for round_ in range(args.rounds):
        for name, case in runs:
            mode, _, cpus = case.partition("@")
            if mode not in ("sync", "async") and name == "before":
                continue  # modes the old code lacks
            command = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--updates",
                str(args.updates),
                "--warmup",
                str(args.warmup),
            ]
            if cpus:
                command = ["taskset", "-c", cpus, *command]
            env = {
                **os.environ,
                "PYTHONPATH": os.path.abspath(impls[name]),
                "PYLANDER_NO_TQDM": "1",
            }
            line = (
                subprocess.run(command, env=env, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results[(name, case)].append(json.loads(line))
            print(f"round {round_ + 1} {name:>8} {case:>8}: {line}", flush=True)
    print(f"\n{'impl':>8} {'case':>8} {'ratio (median)':>15} {'all':>24} {'cpu_ratio':>10}")
    for (name, case), got in results.items():
        if got:
            ratios = [r["ratio"] for r in got]
            cpu = statistics.median(r["cpu_ratio"] for r in got)
            print(
                f"{name:>8} {case:>8} {statistics.median(ratios):>15.3f} "
                f"{' '.join(f'{r:.3f}' for r in ratios):>24} {cpu:>10.3f}"
            )


if __name__ == "__main__":
    main()
