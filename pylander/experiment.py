"""``python -m pylander.experiment``: train several seeds in parallel and report them together.

    python -m pylander.experiment --num-seeds 10 --out runs/ll10 -- --stop-when-solved
    python -m pylander.experiment --seeds 1 2 3 --config best.toml --jobs 2

Every seed is an ordinary run, ``python -m pylander.train --seed S --out DIR/seedS --quiet``
(plus ``--config`` and the train flags after ``--``), in its own process; its output goes to
``DIR/logs/seedS.log``. Rerunning the same command skips the seeds that finished (a
``summary.json`` and the same config) and resumes those that have a checkpoint, so a killed
experiment loses no finished seed; a seed whose parent dies is sent SIGTERM, which makes it save
a checkpoint first.

Writes ``DIR/results.md`` (the table it prints), ``DIR/results.json`` and ``DIR/curve.png``:
the evaluation curve over env steps across seeds (each run's ``eval_mean_return`` if it has
one, else its training ``mean_return``, interpolated onto a common grid), as the mean with a
bootstrap 95% band and the interquartile mean with stratified-bootstrap intervals (rliable's,
where it is installed).
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pylander.config import TrainConfig
from pylander.threads import available_cores

LOCK_WAIT_SECONDS = 60
"""How long a rerun waits for the seeds of a killed experiment to save and stop."""
OWN_FLAGS = ("--seed", "--out", "--resume", "--config", "--force")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pylander.experiment",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s (--seeds S [S ...] | --num-seeds N) [options] [-- TRAIN FLAGS]",
        description="Train several seeds in parallel and report them together.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--seeds", type=int, nargs="+", metavar="S", help="the seeds to train")
    which.add_argument("--num-seeds", type=int, metavar="N", help="seeds 1 to N")
    parser.add_argument(
        "--jobs",
        type=int,
        default=os.cpu_count() or 1,
        help="seeds trained at once (default: the CPU count)",
    )
    parser.add_argument("--config", type=Path, help="config.toml every seed starts from")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/experiment"),
        metavar="DIR",
        help="output folder (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap-reps",
        type=int,
        default=1000,
        help="bootstrap resamples for the curve's intervals (default: %(default)s)",
    )
    return parser


@dataclasses.dataclass
class Seed:
    seed: int
    out: Path
    config: TrainConfig
    command: list[str]
    state: str = "fresh"
    """done (skipped), resume, fresh, or force (a start that saved no checkpoint: replaced)."""


def plan(args: argparse.Namespace, extra: list[str], parser: argparse.ArgumentParser) -> list[Seed]:
    """Each seed's config, state and command; every error is a usage error, before writing."""
    import pylander.train as train_cli
    from pylander.envs import resolve_env_id

    seeds = args.seeds if args.seeds is not None else list(range(1, (args.num_seeds or 0) + 1))
    if not seeds:
        parser.error("give the seeds: --seeds S [S ...] or --num-seeds N (N >= 1)")
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seeds: each seed once, got {' '.join(map(str, seeds))}")
    if args.jobs <= 0:
        parser.error(f"--jobs must be positive, got {args.jobs}")
    if args.bootstrap_reps <= 0:
        parser.error(f"--bootstrap-reps must be positive, got {args.bootstrap_reps}")
    clash = [f for f in extra if f.split("=")[0] in OWN_FLAGS]
    if clash:
        parser.error(f"train flags after --: {clash[0]} is the experiment's to give")
    base = [*(["--config", str(args.config)] if args.config else []), *extra]
    train_parser = train_cli.build_parser()
    planned = []
    for seed in seeds:
        out = args.out / f"seed{seed}"
        flags = [*base, "--seed", str(seed), "--out", str(out), "--quiet"]
        config = train_cli.config_from_args(train_parser.parse_args(flags), train_parser)
        if not planned:
            train_cli.check_env(config, train_parser)
        config.env_id = resolve_env_id(config.env_id, announce=False)  # as config.toml holds it
        command = [sys.executable, "-m", "pylander.train", *flags]
        planned.append(Seed(seed, out, config, command, _state(out, config, parser)))
    return planned


def _state(out: Path, config: TrainConfig, parser: argparse.ArgumentParser) -> str:
    if not (out / "config.toml").is_file():
        return "force" if out.exists() and any(out.iterdir()) else "fresh"
    try:
        held = TrainConfig.load(out / "config.toml")
    except ValueError:
        held = None
    if held is None or _comparable(held) != _comparable(config):
        parser.error(f"{out} holds a run with other settings; use another --out or remove it")
    summary = _summary(out)
    if summary is not None and summary.get("stop_reason") != "interrupted":
        return "done"
    return "resume" if (out / "checkpoint.pt").is_file() else "force"


def _comparable(config: TrainConfig) -> TrainConfig:
    """What must match for a run directory to hold this seed's run: what it learns, not where it
    is (config.toml holds no ``out``) or how one invocation ran (the run-time settings)."""
    defaults = TrainConfig()
    return dataclasses.replace(
        config, out="", **{name: getattr(defaults, name) for name in TrainConfig.runtime_fields()}
    )


def _summary(out: Path) -> dict | None:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def _die_with_parent(parent: int) -> None:
    """In a seed's process: get SIGTERM (save and stop) when the experiment process dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:  # died before prctl
            os.kill(os.getpid(), signal.SIGTERM)


def run_seeds(seeds: list[Seed], jobs: int, logs: Path, lock_fd: int) -> dict[int, int]:
    """Run the seeds not done, ``jobs`` at a time; returns each one's exit status."""
    pending = [s for s in seeds if s.state != "done"]
    running: dict[int, tuple[subprocess.Popen, float]] = {}
    status: dict[int, int] = {}
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if jobs > 1:  # each seed's torch threads (--torch-threads 0) within its share of the cores
        env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // jobs)))
    try:
        while pending or running:
            while pending and len(running) < jobs:
                s = pending.pop(0)
                running[s.seed] = (_start(s, logs, lock_fd, env), time.perf_counter())
                print(
                    f"seed {s.seed}: {'resumed' if s.state == 'resume' else 'started'}", flush=True
                )
            time.sleep(0.2)
            for seed, (proc, started) in list(running.items()):
                if proc.poll() is not None:
                    del running[seed]
                    status[seed] = proc.returncode
                    how = "done" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
                    print(
                        f"seed {seed}: {how} after {time.perf_counter() - started:.0f} s; "
                        f"log in {logs / f'seed{seed}.log'}",
                        flush=True,
                    )
    except KeyboardInterrupt:  # the seeds got the SIGINT too: let them save before returning
        for proc, _ in running.values():
            proc.wait()
        raise
    return status


def _start(s: Seed, logs: Path, lock_fd: int, env: dict[str, str]) -> subprocess.Popen:
    command = {
        "resume": [sys.executable, "-m", "pylander.train", "--resume", str(s.out)],
        "force": [*s.command, "--force"],
    }.get(s.state, s.command)
    parent = os.getpid()
    with open(logs / f"seed{s.seed}.log", "a") as log:
        # The lock's descriptor goes with the seeds: the folder stays locked until the last
        # of them has stopped, even when this process is killed.
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(lock_fd,),
            preexec_fn=lambda: _die_with_parent(parent),
        )


def _lock(out: Path, parser: argparse.ArgumentParser):
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / ".lock", "w")  # noqa: SIM115  (held, and locked, until the process exits)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() > deadline:
                parser.error(f"--out {out}: another experiment is running there")
            time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own, extra = (
        (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    )
    parser = build_parser()
    args = parser.parse_args(own)
    seeds = plan(args, extra, parser)
    lock = _lock(args.out, parser)
    for s in seeds:  # again, now that no earlier experiment's seeds are still writing
        s.state = _state(s.out, s.config, parser)
    skipped = [s.seed for s in seeds if s.state == "done"]
    if skipped:
        print(f"seeds {' '.join(map(str, skipped))}: finished already, skipped")
    try:
        status = run_seeds(seeds, args.jobs, args.out / "logs", lock.fileno())
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume the unfinished seeds", file=sys.stderr)
        return 130
    from pylander.aggregate import write_report

    table = write_report(args.out, [(s.seed, s.out) for s in seeds], args.bootstrap_reps)
    print(table)
    return 1 if any(status.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
