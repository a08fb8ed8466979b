"""Periodic greedy evaluation during training, after SB3's ``EvalCallback``."""

from __future__ import annotations

from pylander.hooks import Callback, UpdateInfo

PERIODIC_SEED_OFFSET = 7_777_777
"""Periodic evaluations play the episodes of seed ``run seed + PERIODIC_SEED_OFFSET``, never the
final evaluation's, so the policy they choose is scored on episodes it was not chosen on."""


class PeriodicEvaluation(Callback):
    """Every ``interval`` env steps, play ``episodes`` greedy episodes (the same ones every time,
    so that policies are compared on equal terms), record ``eval_mean_return`` and
    ``eval_std_return``, and keep the best-scoring policy as ``best.pt``."""

    def __init__(self, interval: int, episodes: int):
        self.interval, self.episodes = interval, episodes

    def on_update(self, info: UpdateInfo) -> None:
        run, counters = info.run, info.run.counters
        if info.steps < counters.get("next_periodic_eval", self.interval):
            return
        counters["next_periodic_eval"] = (info.steps // self.interval + 1) * self.interval
        returns = run.evaluate(
            self.episodes,
            seed=run.config.seed + PERIODIC_SEED_OFFSET,
            num_envs=min(self.episodes, 32),
        )
        info.record("eval_mean_return", float(returns.mean()))
        info.record("eval_std_return", float(returns.std()))
        if returns.mean() > counters["best_eval"]:
            counters["best_eval"] = float(returns.mean())
            run.save_best()
