"""Stopping hooks."""

from __future__ import annotations

from pylander.hooks import Callback, UpdateInfo

EVAL_RETRY_STEPS = 100_000
"""After an evaluation fails to confirm a solved training mean, wait this long to retry."""


class StopWhenSolved(Callback):
    """Stop once ``key`` in the update's metrics reaches ``threshold`` and the run's final
    evaluation (``eval_episodes`` fresh episodes) confirms it; that evaluation becomes the run's
    result and the policy becomes ``best.pt``.

    ``key`` is ``eval_mean_return`` (the periodic evaluation) or ``mean_return`` (the last 100
    training episodes, when there is no periodic evaluation). After a failed confirmation of the
    training mean, the next try waits :data:`EVAL_RETRY_STEPS`.
    """

    stop_reason = "solved"

    def __init__(self, threshold: float, key: str = "eval_mean_return"):
        self.threshold, self.key = threshold, key

    def on_update(self, info: UpdateInfo) -> bool | None:
        run, counters = info.run, info.run.counters
        value = info.metrics.get(self.key)
        if value is None or not value >= self.threshold:
            return None
        if self.key == "mean_return" and (
            len(run.recent) < run.recent.maxlen or info.steps < counters["next_eval_steps"]
        ):
            return None
        returns = run.evaluate()
        run.message(
            f"{self.key} {value:.1f} >= {self.threshold:g}; confirmation on "
            f"{returns.size} fresh greedy episodes: {returns.mean():.1f}"
        )
        if returns.mean() >= self.threshold:
            run.eval_returns = run.last_eval_returns = returns  # the best is the last
            run.save_best()
            return False
        counters["next_eval_steps"] = info.steps + EVAL_RETRY_STEPS
        return None
