"""Training hooks (callbacks), after Stable-Baselines3's: the trainer runs the algorithm and
calls each hook after every update and once at the end. Checkpoints, ``best.pt``, stopping when
solved, the metrics files and the progress bar are hooks (:func:`default_hooks`); a user's own
hooks go through the same interface (``pylander.train(config, callbacks=[...])``).

A hook is a :class:`Callback`, or a plain callable ``fn(info) -> bool | None``. Returning False
from ``on_update`` stops training after that update (``stop_reason`` is the hook's
``stop_reason`` attribute, "callback" by default); every hook still sees that update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pylander.run import Run


@dataclass
class UpdateInfo:
    """What a hook sees after each update."""

    update: int
    steps: int
    """Env steps so far, over all envs and processes."""
    episodes: int
    seconds: float
    metrics: dict[str, float]
    """This update's row of ``metrics.csv``: the algorithm's and the trainer's statistics. A hook
    may add its own keys with :meth:`record`; they are written with the row."""
    run: Run = field(repr=False)

    def record(self, key: str, value: float) -> None:
        """Add ``key`` to this update's metrics (``metrics.csv`` and TensorBoard)."""
        self.metrics[key] = value


class Callback:
    """Base class for hooks; override what you need."""

    stop_reason = "callback"
    """``summary.json``'s ``stop_reason`` when this hook stops training."""

    def on_start(self, run: Run) -> None:
        """Before the first update (of this process: after a resume too)."""

    def on_update(self, info: UpdateInfo) -> bool | None:
        """After every update; return False to stop training."""
        return None

    def on_end(self, run: Run) -> None:
        """Once training has stopped and ``run.summary`` holds the result (also after a signal)."""

    def close(self) -> None:
        """Release files and the like; called last, also when training failed."""


class _FunctionCallback(Callback):
    def __init__(self, fn: Callable[[UpdateInfo], bool | None]):
        self.fn = fn

    def on_update(self, info: UpdateInfo) -> bool | None:
        return self.fn(info)


def as_callback(hook: Any) -> Callback:
    """A :class:`Callback` for ``hook``: a Callback-like object passes, a callable is wrapped."""
    if callable(getattr(hook, "on_update", None)):
        return hook
    if callable(hook):
        return _FunctionCallback(hook)
    raise TypeError(f"a callback must have on_update(info) or be callable, got {hook!r}")


def default_hooks(config: Any, threshold: float | None) -> tuple[list[Callback], list[Callback]]:
    """The trainer's own hooks, as (before the user's hooks, after them): the metrics writer and
    the console come last, so that a row holds what every other hook recorded."""
    from pylander.hooks.checkpoints import BestTrainingMean, PeriodicCheckpoint
    from pylander.hooks.evaluation import PeriodicEvaluation
    from pylander.hooks.metrics import ConsoleProgress, MetricsWriter
    from pylander.hooks.stopping import StopWhenSolved

    if config.eval_interval:
        first: list[Callback] = [
            PeriodicEvaluation(config.eval_interval, config.eval_interval_episodes)
        ]
    else:
        first = [BestTrainingMean()]
    first.append(PeriodicCheckpoint(config.checkpoint_interval))
    if config.stop_when_solved and threshold is not None:
        key = "eval_mean_return" if config.eval_interval else "mean_return"
        first.append(StopWhenSolved(threshold, key))
    return first, [MetricsWriter(), ConsoleProgress(config.log_interval)]
