"""Stopping hooks."""

from __future__ import annotations

from pylander.hooks import Callback, UpdateInfo

EVAL_RETRY_STEPS = 100_000
"""After an evaluation fails to confirm a solved training mean, wait this long to retry."""


class StopWhenSolved(Callback):
    """Stop once the last 100 training episodes average ``threshold`` and a greedy evaluation
    (``eval_episodes`` fresh episodes) confirms it; the evaluation becomes the run's result."""

    stop_reason = "solved"

    def __init__(self, threshold: float):
        self.threshold = threshold

    def on_update(self, info: UpdateInfo) -> bool | None:
        run, counters = info.run, info.run.counters
        recent = run.recent
        solved_by_training = (len(recent) == recent.maxlen
                              and info.metrics["mean_return"] >= self.threshold)
        if not solved_by_training or info.steps < counters["next_eval_steps"]:
            return None
        returns = run.evaluate()
        run.message(f"training mean {info.metrics['mean_return']:.1f} >= {self.threshold:g}; "
                    f"greedy evaluation: {returns.mean():.1f}")
        if returns.mean() >= self.threshold:
            run.eval_returns = returns
            return False
        counters["next_eval_steps"] = info.steps + EVAL_RETRY_STEPS
        return None
