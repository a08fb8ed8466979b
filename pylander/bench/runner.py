"""The sections by name, :func:`run_benchmarks` (the results document) and the command line."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

import torch

import pylander
from pylander.bench.distributed import bench_distributed
from pylander.bench.notebook import bench_notebook
from pylander.bench.ops import bench_ops
from pylander.bench.profiling import bench_profile
from pylander.bench.report import check_targets, format_report, strip_private
from pylander.bench.settings import Log, Settings
from pylander.bench.trainer import bench_envpool, bench_trainer, bench_vector_env, bench_workers


class Section(NamedTuple):
    title: str
    """The progress line printed when the section starts."""
    run: Callable[[Settings, Path, Log], dict]
    """Returns the section's entries of the results document."""


SECTIONS: dict[str, Section] = {
    "ops": Section("ops ...", bench_ops),
    "vector_env": Section(
        "env-only: SerialVectorEnv vs gymnasium's SyncVectorEnv ...", bench_vector_env
    ),
    "trainer": Section("trainer vs env-only ...", bench_trainer),
    "workers": Section("trainer with rollout workers vs one-core env-only ...", bench_workers),
    "envpool": Section("trainer on envpool's envs vs gymnasium env-only ...", bench_envpool),
    "notebook": Section("notebook's loop vs --algo notebook ...", bench_notebook),
    "distributed": Section("distributed: --procs 1 vs --procs 2 ...", bench_distributed),
    "profile": Section("profile of training updates ...", bench_profile),
}
ALIASES = {"seed": "notebook"}
"""Old section names still accepted."""
DEFAULT_SECTIONS = ("ops", "vector_env", "trainer", "workers", "envpool", "notebook", "distributed")
"""What a plain run does; ``--profile`` adds ``profile``."""


def section_names(names: Iterable[str]) -> tuple[str, ...]:
    """``names`` with aliases replaced, in run order, each once; ValueError for unknown ones."""
    wanted = set()
    for name in names:
        name = ALIASES.get(name, name)
        if name not in SECTIONS:
            raise ValueError(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        wanted.add(name)
    return tuple(name for name in SECTIONS if name in wanted)


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_benchmarks(
    settings: Settings, sections: Iterable[str] = DEFAULT_SECTIONS, log: Log = print
) -> dict:
    """Run the chosen sections and return the results (the JSON document)."""
    names = section_names(sections)
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    results: dict = {
        "meta": {
            "pylander": pylander.__version__,
            "torch": torch.__version__,
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "load_before": _load(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "preset": settings.preset,
            "device": settings.device,
            "gpu": torch.cuda.get_device_name() if settings.device == "cuda" else None,
            "settings": dataclasses.asdict(settings),
        }
    }
    with tempfile.TemporaryDirectory(prefix="pylander-bench-") as tmp:
        for name in names:
            log(SECTIONS[name].title)
            results.update(SECTIONS[name].run(settings, Path(tmp), log))
    # The goals were set for the CPU ops and the CPU trainer; a GPU run reports its ratios only.
    results["targets"] = check_targets(results) if settings.device == "cpu" else {}
    results["meta"]["load_after"] = _load()
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    """``python -m pylander.bench``; returns the exit status."""
    from pylander import bench

    parser = argparse.ArgumentParser(
        prog="python -m pylander.bench",
        description=bench.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats (CI smoke)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="add a profile of training updates (cProfile, torch.profiler)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*SECTIONS, *ALIASES],
        metavar="SECTION",
        help=f"run only these sections, of {', '.join(SECTIONS)} (seed: the old name of notebook)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads of the ops and the one-core trainer (default 1); the "
        "trainer on the whole machine takes its own (--torch-threads 0)",
    )
    parser.add_argument(
        "--trainer-updates",
        type=int,
        metavar="N",
        help="updates timed in the trainer section (default 120, --quick 10)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the ops and the trainer's policy run (notebook and "
        "distributed stay on the CPU)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    settings = Settings.quick() if args.quick else Settings.full()
    settings.threads = args.threads
    if args.trainer_updates is not None:
        if args.trainer_updates < 3:
            parser.error("--trainer-updates must be at least 3 (the first fifth is warm-up)")
        settings.trainer_updates = args.trainer_updates
    if args.device == "cuda":
        settings.on_gpu()
    sections = section_names(args.only or DEFAULT_SECTIONS)
    if args.profile:
        sections = section_names([*sections, "profile"])
    results = run_benchmarks(
        settings, sections, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    print(format_report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(strip_private(results), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0
