"""Timing of the op micro-benchmarks: ``torch.utils.benchmark.Timer``, interleaved in rounds."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from torch.utils.benchmark import Timer


def interleaved(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    sample_seconds: float,
    warmup_calls: int,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, from ``repeats`` rounds that time every candidate.

    Each round measures every candidate with ``Timer.blocked_autorange(min_run_time=
    sample_seconds)``, starting at a different candidate each time. The Timer picks the block
    size, turns the garbage collector off while timing, synchronises the accelerator before
    every clock reading (GPU work is queued, not done, when a call returns) and runs at this
    process's torch thread count. Returns the per-call time of every timed block.

    Why rounds rather than one ``blocked_autorange`` per candidate: on a shared machine the load
    changes over seconds, and a candidate timed in one stretch would see another load than its
    rival timed in the next. Taking turns spreads every stretch of load over all candidates, so
    their ratio holds still even when their absolute times do not.
    """
    threads = torch.get_num_threads()  # Timer would otherwise time with one thread
    timers = {
        name: Timer("fn()", globals={"fn": fn}, num_threads=threads)
        for name, fn in candidates.items()
    }
    for fn in candidates.values():  # first calls allocate and fill caches
        for _ in range(warmup_calls):
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            samples[name] += timers[name].blocked_autorange(min_run_time=sample_seconds).times
    return samples


def speedup(baseline: list[float], native: list[float]) -> float:
    """Median baseline time over median native time, from samples taken interleaved.

    A ratio of medians rather than a median of per-round ratios: on a loaded machine a sample
    now and then includes a stretch descheduled, and a pair is spoiled when either of its two
    samples is, so the medians of the two series stay clean longer than the paired ratios do.
    """
    return statistics.median(baseline) / statistics.median(native)
