"""The ``profile`` section: where the time of one training update (``algorithm.iterate()``: a
rollout and an update) goes, from cProfile aggregated by function and from torch.profiler."""

from __future__ import annotations

import cProfile
import inspect
import io
import pstats
from pathlib import Path
from types import FunctionType

from torch.profiler import ProfilerActivity, profile

from pylander.algorithms import get_algorithm
from pylander.bench.settings import Log, Settings
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.policies import ActionSampler
from pylander.rollout import RolloutCollector
from pylander.trainer import resolve_device

WARMUP_UPDATES = 3


def _key(function: FunctionType) -> tuple[str, int, str]:
    """The key of ``function`` in ``pstats.Stats.stats``; a decorated function's own, not its
    wrapper's (``torch.no_grad``'s wrapper, for one, is shared by every function it wraps)."""
    code = inspect.unwrap(function).__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def breakdown(stats: pstats.Stats, algorithm, updates: int) -> tuple[dict, dict]:
    """Milliseconds per update and fractions of ``iterate``: env stepping, the policy's ``act``,
    the rest of the rollout loop, and everything after the rollout (the update).

    From each function's cumulative time: cProfile counts a function once however deeply it
    recurses, and its overhead per Python call inflates Python-heavy code (the env) somewhat.
    """
    envs = getattr(algorithm, "envs", None)
    if envs is None:
        raise ValueError(
            f"the profile section needs an algorithm with a vector env "
            f"(algorithm.envs); {type(algorithm).__name__} has none"
        )
    cumulative = {key: row[3] for key, row in stats.stats.items()}

    def seconds(function) -> float:
        return cumulative.get(_key(function), 0.0)

    total = seconds(type(algorithm).iterate)
    rollout = seconds(RolloutCollector.collect)
    parts = {
        "env_step": seconds(type(envs).step),
        "policy_act": seconds(ActionSampler.__call__),
    }
    parts["rollout_glue"] = rollout - parts["env_step"] - parts["policy_act"]
    parts["update"] = total - rollout
    return (
        {k: v / updates * 1e3 for k, v in parts.items()},
        {k: v / total for k, v in parts.items()},
    )


def bench_profile(settings: Settings, workdir: Path, log: Log, top: int = 12) -> dict:
    """Profile ``iterate`` of the configured algorithm (the default trainer's, with its envs in
    this process so that their stepping shows in the profile) after warm-up."""
    config = TrainConfig(**{"quiet": True, "rollout_workers": 0, **settings.trainer_overrides})
    device = resolve_device(config.device)
    algorithm = get_algorithm(config.algo).build(config, device, Collective(device))
    updates = max(settings.profile_updates, 1)
    try:
        algorithm.reset_envs(config.seed)
        for _ in range(WARMUP_UPDATES):
            algorithm.iterate(0.0)

        # cProfile: the breakdown above, and Python functions by own time (env code, rollout
        # glue, autograd wrappers).
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(updates):
            algorithm.iterate(0.0)
        profiler.disable()
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
        stats.print_stats(top)
        ms_per_update, fractions = breakdown(stats, algorithm, updates)
        cprofile_top = [
            {
                "function": f"{Path(filename).name}:{line}({func})",
                "calls": ncalls,
                "tottime_ms": tottime / updates * 1e3,
                "cumtime_ms": cumtime / updates * 1e3,
            }
            for (filename, line, func), (_, ncalls, tottime, cumtime, _) in sorted(
                stats.stats.items(), key=lambda kv: -kv[1][2]
            )[:top]
        ]

        # torch.profiler: the torch ops, native ones included, by self CPU time.
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(updates):
                algorithm.iterate(0.0)
    finally:
        algorithm.close()
    averages = prof.key_averages()
    torch_top = [
        {
            "op": e.key,
            "calls": e.count / updates,
            "self_cpu_ms": e.self_cpu_time_total / updates / 1e3,
        }
        for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]
    ]
    log(f"  profiled {updates} updates")
    return {
        "profile": {
            "algorithm": type(algorithm).__name__,
            "updates": updates,
            "ms_per_update": ms_per_update,
            "fractions": fractions,
            "cprofile_top": cprofile_top,
            "torch_profiler_top": torch_top,
            "_text": {
                "cprofile": stream.getvalue(),
                "torch": averages.table(sort_by="self_cpu_time_total", row_limit=top),
            },
        }
    }
