"""The training loop shared by every algorithm: it runs the algorithm, keeps the counters and
calls the hooks (:mod:`pylander.hooks`: checkpoints, stopping, metrics, progress) after every
update. The learning itself is in :mod:`pylander.algorithms`.

Run directory (``config.resolved_out()``): ``config.toml``, ``metrics.csv``, TensorBoard events,
``checkpoint.pt`` (latest), ``best.pt`` (the best policy: by periodic evaluation, else by the mean
of the last 100 training episodes),
``learning_curve.png`` and ``summary.json``.

Resuming is exact: at every checkpoint all envs start fresh episodes from a seed derived from
(seed, update, rank), so a run resumed from a checkpoint continues exactly as the uninterrupted
run did (same parameters and metrics on the CPU). That holds for a run killed outright (even by
SIGKILL during a save: checkpoints are written atomically), which resumes from its last periodic
checkpoint. SIGINT/SIGTERM instead save a checkpoint at the update where they stop the run, and
``summary.json``; resumed from there, its envs start fresh episodes at that update instead of
running on to the next boundary, so it continues the run but is not a bitwise copy of one never
stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import threading
import time
from typing import Any

import numpy as np
import torch

from pylander import rundir
from pylander.algorithms import Algorithm, Iteration, NonFiniteError, get_algorithm
from pylander.checkpoint import atomic_write
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import resolve_env_id
from pylander.hooks import Callback, as_callback, default_hooks
from pylander.logger import plot_learning_curve
from pylander.run import Run, env_seed, resolve_device  # noqa: F401  (env_seed, resolve_device: API)


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint and ``summary.json`` were written first."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self):  # picklable, so Collective.on_main can pass it to the other ranks
        return type(self), (self.signum, str(self))


def train(
    config: TrainConfig, *, resume: bool = False, callbacks: list[Callback | Any] = ()
) -> dict:
    """Train as ``config`` says; returns the summary (also written to ``summary.json``).

    ``callbacks`` run after the trainer's own hooks, before the metrics are written (see
    :mod:`pylander.hooks`). Raises ``ValueError`` for bad settings, :class:`CheckpointError` for
    a bad checkpoint, :class:`TrainingInterrupted` after saving on SIGINT/SIGTERM, and
    :class:`~pylander.algorithms.NonFiniteError` if training diverges (the last good checkpoint
    is left untouched).
    """
    config.validate()
    config.env_id = resolve_env_id(config.env_id)
    device = resolve_device(config.device)
    comm = Collective(device)
    # Every rank must run the same settings (aside from where rank 0 writes and how a rank runs).
    comm.check_same_settings(
        dataclasses.replace(config, out="", quiet=False, torch_threads=1, vector="sync").to_toml()
    )
    user_hooks = [as_callback(c) for c in callbacks]
    # Rank 0 holds the run directory from before its first write to the end: a second run,
    # or a --force / --resume of this one, is refused meanwhile (rundir.RunDirectoryError).
    with rundir.claim(config.resolved_out(), comm):
        return _train(config, resume, comm, device, user_hooks)


def _train(
    config: TrainConfig,
    resume: bool,
    comm: Collective,
    device: torch.device,
    user_hooks: list[Callback],
) -> dict:
    torch.manual_seed(config.seed)  # the network's initial weights
    run = Run(config, get_algorithm(config.algo).build(config, device, comm), comm, device)
    first, last = default_hooks(config, run.threshold)
    hooks = [*first, *user_hooks, *last]
    try:
        if resume:
            run.load()
        run.reset_envs()
        if comm.is_main:
            rundir.prepare(run.out, config, resume=resume)
        if resume:
            run.message(
                f"resumed {run.out} at update {run.counters['update']}, "
                f"{run.counters['steps']} steps"
            )
        _train_loop(run, hooks)
        comm.check_identical(
            run.algorithm.policy.state_dict()
        )  # raises on every rank if the ranks diverged
        run.save("checkpoint.pt")
        if run.eval_returns is None:
            with _SignalFlag(immediate=True):  # the checkpoint is saved; nothing to finish
                run.evaluate_result()
    except TrainingInterrupted as stop:  # checkpoint.pt is saved already
        run.stop_reason = "interrupted"
        _finish(run, hooks)
        c = run.counters
        raise TrainingInterrupted(
            stop.signum,
            (
                f"interrupted by {signal.Signals(stop.signum).name} at update {c['update']} "
                f"({c['steps']} of {config.total_steps} steps); checkpoint and summary saved in "
                f"{run.out}. Resume with: python -m pylander.train --resume {run.out}"
            ),
        ) from None
    except NonFiniteError as exc:
        _close(run, hooks)
        checkpoint = run.out / "checkpoint.pt"
        if checkpoint.is_file():
            kept = f"The last good checkpoint, {checkpoint}, is untouched"
        else:
            kept = (
                f"No checkpoint was saved before it (the first is due at update "
                f"{config.checkpoint_interval})"
            )
        raise NonFiniteError(
            f"training diverged: {exc}. {kept}; a smaller --learning-rate or "
            "--max-grad-norm may help."
        ) from None
    except BaseException:
        _close(run, hooks)
        raise
    summary = _finish(run, hooks)
    verdict = "SOLVED" if summary["solved"] else "not solved"
    run.message(
        f"{verdict}: {summary['eval_episodes']} evaluation episodes returned "
        f"{summary['eval_mean_return']:.1f} +- {summary['eval_std_return']:.1f} after "
        f"{summary['steps']} steps in {summary['seconds']:.0f} s. Results in {run.out}/"
    )
    return summary


def _train_loop(run: Run, hooks: list[Callback]) -> None:
    """Update until the budget is spent or a hook stops training; SIGINT/SIGTERM save first."""
    config, counters = run.config, run.counters
    started = time.perf_counter() - counters["seconds"]
    with _SignalFlag() as interrupt:
        for hook in hooks:
            hook.on_start(run)
        while counters["steps"] < config.total_steps:
            iteration = _iterate(
                run.algorithm, counters["steps"] / config.total_steps, counters["update"] + 1
            )
            info = run.record(iteration, started)
            stopped_by = [hook for hook in hooks if hook.on_update(info) is False]
            if run.comm.any(bool(stopped_by)):
                run.stop_reason = stopped_by[0].stop_reason if stopped_by else "callback"
                return
            if run.comm.any(interrupt.signum is not None):
                run.save("checkpoint.pt")
                raise TrainingInterrupted(interrupt.signum or signal.SIGTERM)


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between updates; a second one aborts.

    With ``immediate`` the first signal raises :class:`TrainingInterrupted` at once instead, for
    work that holds no state worth finishing (the final evaluation). Outside the main thread
    (``train`` called from a worker thread) signals cannot be caught, and this does nothing.
    """

    def __init__(self, immediate: bool = False):
        self.signum: int | None = None
        self.immediate = immediate
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.immediate:
            raise TrainingInterrupted(signum)

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _iterate(algo: Algorithm, progress: float, update: int) -> Iteration:
    """``algo.iterate``, with NaN/inf met by the native ops reported as the update's divergence."""
    try:
        return algo.iterate(progress)
    except ValueError as exc:
        # The ops reject non-finite input with "`<name>` contains NaN or infinity" (csrc/checks.h):
        # here that means the env's observations/rewards or the network's outputs went bad.
        if "contains NaN or infinity" not in str(exc):
            raise
        raise NonFiniteError(
            f"non-finite values at update {update} ({exc}); the update was not applied"
        ) from None
    except RuntimeError as exc:
        # An optimizer step too large for float32 (e.g. --learning-rate 1e38): torch refuses it
        # with "value cannot be converted to type float without overflow".
        if "overflow" not in str(exc) or isinstance(exc, NonFiniteError):
            raise
        raise NonFiniteError(
            f"the optimizer step overflowed float32 at update {update} ({str(exc).strip()[:200]})"
        ) from None


def _summary(run: Run) -> dict:
    config, counters, returns, threshold = run.config, run.counters, run.eval_returns, run.threshold
    evaluated = returns is not None and run.stop_reason != "interrupted"
    return {
        "env": config.env_id,
        "algo": config.algo,
        "seed": config.seed,
        "steps": counters["steps"],
        "episodes": counters["episodes"],
        "updates": counters["update"],
        "seconds": round(counters["seconds"], 3),
        "steps_per_second": round(counters["steps"] / max(counters["seconds"], 1e-9), 1),
        "train_mean_return": float(np.mean(run.recent))
        if run.recent
        else None,  # last 100 episodes
        "eval_mean_return": float(returns.mean()) if evaluated else None,
        "eval_std_return": float(returns.std()) if evaluated else None,
        "eval_episodes": int(returns.size) if evaluated else 0,
        "eval_greedy": not config.eval_stochastic,
        "last_eval_mean_return": _mean(run.last_eval_returns) if evaluated else None,
        "best_periodic_eval": counters["best_eval"]
        if math.isfinite(counters["best_eval"])
        else None,
        "reward_threshold": threshold,
        "solved": bool(evaluated and threshold is not None and returns.mean() >= threshold),
        "stop_reason": run.stop_reason,
    }


def _mean(returns: np.ndarray | None) -> float | None:
    return float(returns.mean()) if returns is not None else None


def _finish(run: Run, hooks: list[Callback]) -> dict:
    """The run's result: hooks' ``on_end``, then ``summary.json`` and the learning curve."""
    run.summary = _summary(run)
    try:
        for hook in hooks:
            hook.on_end(run)
    finally:
        _close(run, hooks)
    if run.comm.is_main:
        atomic_write(
            run.out / "summary.json",
            lambda fh: fh.write(json.dumps(run.summary, indent=2).encode()),
        )
        plot_learning_curve(
            run.out / "metrics.csv",
            run.out / "learning_curve.png",
            f"{run.summary['env']} ({run.summary['algo']}, seed {run.summary['seed']})",
            run.threshold,
        )
    return run.summary


def _close(run: Run, hooks: list[Callback]) -> None:
    for hook in hooks:
        hook.close()
    run.algorithm.close()
