"""Checkpoint hooks: ``checkpoint.pt`` every few updates, ``best.pt`` at the best training mean
(see :mod:`pylander.hooks.evaluation` for ``best.pt`` chosen by evaluation)."""

from __future__ import annotations

from pylander.hooks import Callback, UpdateInfo


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
    """Save ``best.pt`` whenever the mean of the last 100 training episodes is the best yet (the
    choice of best policy when there is no periodic evaluation)."""

    def on_update(self, info: UpdateInfo) -> None:
        run = info.run
        recent, counters = run.recent, run.counters
        if len(recent) == recent.maxlen and info.metrics["mean_return"] > counters["best_mean"]:
            counters["best_mean"] = info.metrics["mean_return"]
            run.save_best()
