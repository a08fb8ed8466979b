"""Checkpoint hooks: ``checkpoint.pt`` every few updates, ``best.pt`` at the best training mean."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pylander.hooks import Callback, UpdateInfo

if TYPE_CHECKING:
    from pylander.trainer import Run


class PeriodicCheckpoint(Callback):
    """Save ``checkpoint.pt`` every ``interval`` updates, and restart the envs' episodes there.

    The restart is what makes resuming exact: a run resumed from this checkpoint starts its envs
    from the same seed (derived from the run's seed, the update and the rank) as the run that
    went on.
    """

    def __init__(self, interval: int):
        self.interval = interval

    def on_update(self, info: UpdateInfo) -> None:
        if info.update % self.interval:
            return
        run = info.run
        run.comm.check_identical(run.algorithm.policy.state_dict())
        run.save("checkpoint.pt")
        run.reset_envs()


class BestTrainingMean(Callback):
    """Save ``best.pt`` whenever the mean of the last 100 training episodes is the best yet.

    A run that never finishes 100 episodes keeps its final policy as ``best.pt``.
    """

    def on_update(self, info: UpdateInfo) -> None:
        run = info.run
        recent, counters = run.recent, run.counters
        if len(recent) == recent.maxlen and info.metrics["mean_return"] > counters["best_mean"]:
            counters["best_mean"] = info.metrics["mean_return"]
            run.save("best.pt")

    def on_end(self, run: Run) -> None:
        if run.stop_reason != "interrupted" and run.counters["best_mean"] == -math.inf:
            run.save("best.pt")
