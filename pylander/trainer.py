"""The training loop shared by every algorithm: counters, logging, checkpoints, stopping,
evaluation and the run directory. The learning itself is in :mod:`pylander.algorithms`.

Run directory (``config.resolved_out()``): ``config.toml``, ``metrics.csv``, TensorBoard events,
``checkpoint.pt`` (latest), ``best.pt`` (best mean of the last 100 training episodes),
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
import time
from collections import deque
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from pylander.algorithms import NonFiniteError
from pylander.checkpoint import (CheckpointError, atomic_write, load_checkpoint,
                                 remove_stale_temporaries, save_checkpoint)
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import check_spaces, make_vector_env, resolve_env_id, reward_threshold
from pylander.evaluate import evaluate
from pylander.logger import RunLogger, plot_learning_curve

EVAL_RETRY_STEPS = 100_000
"""After an evaluation fails to confirm a solved training mean, wait this long to retry."""


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM stopped training; a checkpoint and ``summary.json`` were written first."""

    def __init__(self, signum: int, message: str | None = None):
        super().__init__(message or signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self):  # picklable, so Collective.on_main can pass it to the other ranks
        return type(self), (self.signum, str(self))


def env_seed(seed: int, update: int, rank: int = 0) -> int:
    """Seed for the episodes that start at ``update`` on ``rank``."""
    return int(np.random.SeedSequence([seed, update, rank]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` as a device with its index (``cuda:0``), so that tensors and
    generators made from it all name the same device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def build_algorithm(config: TrainConfig, device: torch.device, comm: Collective):
    """Make the env(s) and the algorithm object for ``config.algo``."""
    if config.algo == "seed":
        from pylander.algorithms.seed import NotebookReinforce

        env = gym.make(config.env_id)
        return NotebookReinforce(config, env, *check_spaces(env, config.env_id), device), env
    from pylander.algorithms.reinforce import Reinforce

    envs = make_vector_env(config.env_id, config.num_envs, config.vector)
    try:
        sizes = check_spaces(envs, config.env_id)
    except ValueError:
        envs.close()
        raise
    return Reinforce(config, envs, *sizes, device, comm), envs


class _SignalFlag:
    """Turns SIGINT/SIGTERM into a flag the loop checks between updates; a second one aborts.

    With ``immediate`` the first signal raises :class:`TrainingInterrupted` at once instead, for
    work that holds no state worth finishing (the final evaluation).
    """

    def __init__(self, immediate: bool = False):
        self.signum: int | None = None
        self.immediate = immediate
        self._previous = {}

    def __enter__(self):
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


def train(config: TrainConfig, *, resume: bool = False) -> dict:
    """Train as ``config`` says; returns the summary (also written to ``summary.json``).

    Raises ``ValueError`` for bad settings, :class:`CheckpointError` for a bad checkpoint,
    :class:`TrainingInterrupted` after saving on SIGINT/SIGTERM, and
    :class:`~pylander.algorithms.NonFiniteError` if training diverges (the last good checkpoint
    is left untouched).
    """
    config.validate()
    config.env_id = resolve_env_id(config.env_id)
    device = resolve_device(config.device)
    comm = Collective(device)
    out = config.resolved_out()
    threshold = reward_threshold(config.env_id)

    # Every rank must run the same settings (aside from where rank 0 writes and how a rank runs).
    comm.check_same_settings(dataclasses.replace(config, out="", quiet=False, torch_threads=1,
                                                 vector="sync").to_toml())
    if comm.world_size > 1 and config.algo == "seed":
        raise ValueError("--algo seed is the single-process notebook; run it without --procs/torchrun")

    torch.manual_seed(config.seed)  # the network's initial weights
    algo, envs = build_algorithm(config, device, comm)
    counters = {"update": 0, "steps": 0, "episodes": 0, "seconds": 0.0, "best_mean": -math.inf,
                "next_eval_steps": 0}
    recent: deque[float] = deque(maxlen=100)
    if resume:
        # Rank 0 reads it and sends it to the others (whose machines may not have the file).
        payload = comm.on_main(lambda: load_checkpoint(out / "checkpoint.pt", env_id=config.env_id,
                                                       architecture=algo.architecture()),
                               "rank 0 to load the checkpoint")
        try:
            algo.load_state_dict(payload["algorithm"])
            counters.update(payload["trainer"]["counters"])
            recent.extend(float(r) for r in payload["trainer"]["recent_returns"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{out / 'checkpoint.pt'} does not fit this run ("
                                  f"{type(exc).__name__}: {str(exc).strip()[:300]})") from None
    algo.reset_envs(env_seed(config.seed, counters["update"], comm.rank))

    if comm.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # Left behind by a run killed while saving (SIGKILL); the files themselves are intact.
        remove_stale_temporaries(out, ["config.toml", "checkpoint.pt", "best.pt", "summary.json"])
        atomic_write(out / "config.toml", lambda fh: fh.write(config.to_toml().encode()))
    logger = RunLogger(out, config.total_steps, quiet=config.quiet, log_interval=config.log_interval,
                       resume_update=counters["update"], initial_steps=counters["steps"],
                       enabled=comm.is_main)
    if resume:
        logger.message(f"resumed {out} at update {counters['update']}, {counters['steps']} steps")

    def save(path: Path) -> None:
        if comm.is_main:
            save_checkpoint(path, env_id=config.env_id, architecture=algo.architecture(),
                            algorithm=algo.state_dict(), config=vars(config),
                            trainer={"counters": dict(counters), "recent_returns": list(recent)})

    def solved_by_training() -> bool:
        return threshold is not None and len(recent) == recent.maxlen and np.mean(recent) >= threshold

    stop_reason = "budget"
    eval_returns = None
    started = time.perf_counter() - counters["seconds"]
    try:
        with _SignalFlag() as interrupt:
            while counters["steps"] < config.total_steps:
                iteration = _iterate(algo, counters["steps"] / config.total_steps,
                                     counters["update"] + 1)
                episodes = comm.gather(iteration.episodes)
                counters["update"] += 1
                counters["steps"] += iteration.steps * comm.world_size
                counters["episodes"] += len(episodes)
                counters["seconds"] = time.perf_counter() - started
                recent.extend(r for r, _ in episodes)
                mean_return = float(np.mean(recent)) if recent else math.nan
                logger.log({**counters, "mean_return": mean_return, "loss": iteration.loss,
                            "entropy": iteration.entropy,
                            "steps_per_second": counters["steps"] / max(counters["seconds"], 1e-9)})
                if len(recent) == recent.maxlen and mean_return > counters["best_mean"]:
                    counters["best_mean"] = mean_return
                    save(out / "best.pt")
                if counters["update"] % config.checkpoint_interval == 0:
                    comm.check_identical(algo.policy.state_dict())
                    save(out / "checkpoint.pt")
                    algo.reset_envs(env_seed(config.seed, counters["update"], comm.rank))
                if (config.stop_when_solved and solved_by_training()
                        and counters["steps"] >= counters["next_eval_steps"]):
                    eval_returns = comm.on_main(lambda: _evaluate(algo, config, device),
                                                "rank 0 to evaluate")
                    logger.message(f"training mean {mean_return:.1f} >= {threshold:g}; greedy "
                                   f"evaluation: {eval_returns.mean():.1f}")
                    if eval_returns.mean() >= threshold:
                        stop_reason = "solved"
                        break
                    eval_returns = None
                    counters["next_eval_steps"] = counters["steps"] + EVAL_RETRY_STEPS
                if comm.any(interrupt.signum is not None):
                    raise TrainingInterrupted(interrupt.signum or signal.SIGTERM)
    except TrainingInterrupted as stop:
        save(out / "checkpoint.pt")
        envs.close()
        raise _interrupted(stop.signum, config, counters, recent, threshold, out, logger,
                           comm) from None
    except NonFiniteError as exc:
        logger.close()
        envs.close()
        checkpoint = out / "checkpoint.pt"
        if checkpoint.is_file():
            kept = f"The last good checkpoint, {checkpoint}, is untouched"
        else:
            kept = (f"No checkpoint was saved before it (the first is due at update "
                    f"{config.checkpoint_interval})")
        raise NonFiniteError(f"training diverged: {exc}. {kept}; a smaller --learning-rate or "
                             "--max-grad-norm may help.") from None
    except BaseException:
        logger.close()
        envs.close()
        raise

    comm.check_identical(algo.policy.state_dict())  # raises on every rank if the ranks diverged
    save(out / "checkpoint.pt")
    if counters["best_mean"] == -math.inf:  # 100 episodes never finished: keep the final policy
        save(out / "best.pt")
    envs.close()
    if eval_returns is None:
        try:
            with _SignalFlag(immediate=True):  # the checkpoint is saved; nothing to finish
                eval_returns = comm.on_main(lambda: _evaluate(algo, config, device),
                                            "rank 0 to evaluate")
        except TrainingInterrupted as stop:
            raise _interrupted(stop.signum, config, counters, recent, threshold, out, logger,
                               comm) from None
    summary = _summary(config, counters, eval_returns, threshold, stop_reason, recent)
    _finish(out, summary, logger, comm, threshold)
    verdict = "SOLVED" if summary["solved"] else "not solved"
    logger.message(f"{verdict}: {summary['eval_episodes']} evaluation episodes returned "
                   f"{summary['eval_mean_return']:.1f} +- {summary['eval_std_return']:.1f} after "
                   f"{counters['steps']} steps in {counters['seconds']:.0f} s. Results in {out}/")
    return summary


def _iterate(algo, progress: float, update: int):
    """``algo.iterate``, with NaN/inf met by the native ops reported as the update's divergence."""
    try:
        return algo.iterate(progress)
    except ValueError as exc:
        # The ops reject non-finite input with "`<name>` contains NaN or infinity" (csrc/checks.h):
        # here that means the env's observations/rewards or the network's outputs went bad.
        if "contains NaN or infinity" not in str(exc):
            raise
        raise NonFiniteError(f"non-finite values at update {update} ({exc}); the update was not "
                             "applied") from None
    except RuntimeError as exc:
        # An optimizer step too large for float32 (e.g. --learning-rate 1e38): torch refuses it
        # with "value cannot be converted to type float without overflow".
        if "overflow" not in str(exc) or isinstance(exc, NonFiniteError):
            raise
        raise NonFiniteError(f"the optimizer step overflowed float32 at update {update} "
                             f"({str(exc).strip()[:200]})") from None


def _interrupted(signum: int, config: TrainConfig, counters: dict, recent,
                 threshold: float | None, out: Path, logger: RunLogger,
                 comm: Collective) -> TrainingInterrupted:
    """Write summary.json for a run stopped by a signal (its checkpoint is already saved)."""
    summary = _summary(config, counters, None, threshold, "interrupted", recent)
    _finish(out, summary, logger, comm, threshold)
    return TrainingInterrupted(signum, (
        f"interrupted by {signal.Signals(signum).name} at update {counters['update']} "
        f"({counters['steps']} of {config.total_steps} steps); checkpoint and summary saved in "
        f"{out}. Resume with: python -m pylander.train --resume {out}"))


def _evaluate(algo, config: TrainConfig, device: torch.device) -> np.ndarray:
    return evaluate(algo.logits, config.env_id, config.eval_episodes, config.seed,
                    stochastic=config.eval_stochastic, device=device)


def _summary(config: TrainConfig, counters: dict, eval_returns: np.ndarray | None,
             threshold: float | None, stop_reason: str, recent=()) -> dict:
    evaluated = eval_returns is not None
    return {
        "env": config.env_id, "algo": config.algo, "seed": config.seed,
        "steps": counters["steps"], "episodes": counters["episodes"], "updates": counters["update"],
        "seconds": round(counters["seconds"], 3),
        "steps_per_second": round(counters["steps"] / max(counters["seconds"], 1e-9), 1),
        "train_mean_return": float(np.mean(recent)) if len(recent) else None,  # last 100 episodes
        "eval_mean_return": float(eval_returns.mean()) if evaluated else None,
        "eval_std_return": float(eval_returns.std()) if evaluated else None,
        "eval_episodes": int(eval_returns.size) if evaluated else 0,
        "eval_greedy": not config.eval_stochastic,
        "reward_threshold": threshold,
        "solved": bool(evaluated and threshold is not None and eval_returns.mean() >= threshold),
        "stop_reason": stop_reason,
    }


def _finish(out: Path, summary: dict, logger: RunLogger, comm: Collective,
            threshold: float | None) -> None:
    logger.close()
    if not comm.is_main:
        return
    atomic_write(out / "summary.json", lambda fh: fh.write(json.dumps(summary, indent=2).encode()))
    plot_learning_curve(out / "metrics.csv", out / "learning_curve.png",
                        f"{summary['env']} ({summary['algo']}, seed {summary['seed']})", threshold)
