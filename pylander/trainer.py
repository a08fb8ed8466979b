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

import copy
import dataclasses
import json
import math
import signal
import threading
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from pylander import rundir
from pylander.algorithms import Algorithm, Iteration, NonFiniteError, get_algorithm
from pylander.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import resolve_env_id, reward_threshold
from pylander.evaluate import evaluate
from pylander.hooks import Callback, UpdateInfo, as_callback, default_hooks
from pylander.logger import Console, plot_learning_curve


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


class Run:
    """One training run's state, shared by the trainer and its hooks."""

    def __init__(
        self, config: TrainConfig, algorithm: Algorithm, comm: Collective, device: torch.device
    ):
        self.config, self.algorithm, self.comm, self.device = config, algorithm, comm, device
        self.out = config.resolved_out()
        self.threshold = reward_threshold(config.env_id)
        self.counters: dict[str, Any] = {
            "update": 0,
            "steps": 0,
            "episodes": 0,
            "seconds": 0.0,
            "best_mean": -math.inf,
            "best_eval": -math.inf,
            "next_eval_steps": 0,
        }
        self.recent: deque[float] = deque(maxlen=100)
        """Returns of the last 100 finished training episodes (all ranks)."""
        self.recent_lengths: deque[int] = deque(maxlen=100)
        self.console = Console(quiet=config.quiet, enabled=comm.is_main)
        self.best_policy: dict[str, torch.Tensor] | None = None
        """The parameters saved in ``best.pt`` (the policy the run returns), once there is one."""
        self.eval_returns: np.ndarray | None = None
        """The evaluation of the best policy on fresh episodes: the run's result, once known."""
        self.last_eval_returns: np.ndarray | None = None
        """The final policy's score on the same episodes."""
        self.stop_reason = "budget"
        self.summary: dict | None = None

    def message(self, text: str) -> None:
        self.console.message(text)

    def save(self, name: str) -> None:
        """Write the checkpoint ``name`` (``checkpoint.pt``, ``best.pt``) on the main process."""
        if self.comm.is_main:
            save_checkpoint(
                self.out / name,
                env_id=self.config.env_id,
                architecture=self.algorithm.architecture(),
                algorithm=self.algorithm.state_dict(),
                config=vars(self.config),
                trainer={
                    "counters": dict(self.counters),
                    "recent_returns": list(self.recent),
                    "recent_lengths": list(self.recent_lengths),
                    "best_policy": self.best_policy,
                },
            )

    def save_best(self) -> None:
        """Make the current policy the run's best: ``best.pt``, and what the run returns."""
        self.best_policy = {
            k: v.detach().clone() for k, v in self.algorithm.policy.state_dict().items()
        }
        self.save("best.pt")

    def load(self) -> None:
        """Restore the run from its ``checkpoint.pt`` (read by rank 0, sent to the others)."""
        path = self.out / "checkpoint.pt"
        payload = self.comm.on_main(
            lambda: load_checkpoint(
                path, env_id=self.config.env_id, architecture=self.algorithm.architecture()
            ),
            "rank 0 to load the checkpoint",
        )
        try:
            self.algorithm.load_state_dict(payload["algorithm"])
            self.counters.update(payload["trainer"]["counters"])
            self.recent.extend(float(r) for r in payload["trainer"]["recent_returns"])
            self.recent_lengths.extend(int(n) for n in payload["trainer"].get("recent_lengths", []))
            self.best_policy = payload["trainer"].get("best_policy")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from None

    def reset_envs(self) -> None:
        """Fresh episodes from the seed of (run seed, update, rank): see PeriodicCheckpoint."""
        self.algorithm.reset_envs(
            env_seed(self.config.seed, self.counters["update"], self.comm.rank)
        )

    def evaluate(
        self,
        episodes: int | None = None,
        *,
        seed: int | None = None,
        num_envs: int = 16,
        policy: torch.nn.Module | None = None,
    ) -> np.ndarray:
        """Evaluate ``policy`` (the current one by default) on rank 0; every rank gets the returns.

        By default: ``eval_episodes`` episodes of the run's final-evaluation seed."""
        cfg = self.config
        return self.comm.on_main(
            lambda: evaluate(
                policy or self.algorithm.policy,
                cfg.env_id,
                episodes or cfg.eval_episodes,
                cfg.seed if seed is None else seed,
                stochastic=cfg.eval_stochastic,
                num_envs=num_envs,
                device=self.device,
                env_kwargs=cfg.env_kwargs,
            ),
            "rank 0 to evaluate",
        )

    def evaluate_result(self) -> None:
        """Score the best policy, and the final one, on the fresh final-evaluation episodes."""
        if self.best_policy is None:  # nothing chose one (a short run): the final policy
            self.save_best()
        best = copy.deepcopy(self.algorithm.policy)
        best.load_state_dict(self.best_policy)
        self.eval_returns = self.evaluate(policy=best)
        final = self.algorithm.policy.state_dict()
        same = all(torch.equal(final[k], v) for k, v in self.best_policy.items())
        self.last_eval_returns = self.eval_returns if same else self.evaluate()

    def record(self, iteration: Iteration, started: float) -> UpdateInfo:
        """Count an update (over all ranks) and make its row of metrics."""
        episodes = self.comm.gather(iteration.episodes)
        counters = self.counters
        counters["update"] += 1
        counters["steps"] += iteration.steps * self.comm.world_size
        counters["episodes"] += len(episodes)
        counters["seconds"] = time.perf_counter() - started
        self.recent.extend(r for r, _ in episodes)
        self.recent_lengths.extend(n for _, n in episodes)
        metrics: dict[str, Any] = {
            "update": counters["update"],
            "steps": counters["steps"],
            "episodes": counters["episodes"],
            "seconds": counters["seconds"],
            "mean_return": float(np.mean(self.recent)) if self.recent else math.nan,
            "episode_length": float(np.mean(self.recent_lengths))
            if self.recent_lengths
            else math.nan,
            **iteration.metrics,
            "steps_per_second": counters["steps"] / max(counters["seconds"], 1e-9),
        }
        return UpdateInfo(
            counters["update"],
            counters["steps"],
            counters["episodes"],
            counters["seconds"],
            metrics,
            self,
        )


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
