"""What ``python -m pylander.tune`` searches and how it scores a trial: the :class:`Search`
settings, the :class:`Objective` that trains a trial's seeds, and the hook that reports their
evaluation curves to Optuna (see :mod:`pylander.tune` for the objective's definition)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylander.config import TrainConfig
from pylander.hooks import Callback, UpdateInfo
from pylander.search_space import apply_params, default_space

STUDY_NAME = "pylander-tune"
REPORTS_PER_SEED = 20
TRIAL_EVAL_EPISODES = 20
"""A trial's final evaluation is not part of the objective (it is kept as a user attribute):
cap its episodes so that it does not cost more than the training."""


@dataclass
class Search:
    """A search's settings: picklable, so that worker processes can rebuild it."""

    base: TrainConfig
    params: list[str]
    trial_steps: int
    seeds: int
    out: Path
    eval_interval: int | None = None
    """Steps between the trials' periodic evaluations (None: the trainer has none)."""
    unsolved_penalty: float = 0.0
    sampler_seed: int = 0
    prune: bool = True

    def fingerprint(self) -> dict[str, Any]:
        """What makes two searches' objective values comparable (checked on resume)."""
        return {
            "base": self.base.to_toml(),
            "params": sorted(self.params),
            "trial_steps": self.trial_steps,
            "seeds": self.seeds,
            "eval_interval": self.eval_interval,
            "unsolved_penalty": self.unsolved_penalty,
        }

    def open_study(self, worker: int = 0):
        import optuna

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        # A long timeout: parallel workers share one SQLite file and take turns writing.
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{(self.out / 'study.db').resolve()}",
            engine_kwargs={"connect_args": {"timeout": 60}},
        )
        # constant_liar: parallel workers do not all propose the point the running trials hold.
        sampler = optuna.samplers.TPESampler(
            seed=self.sampler_seed + worker, multivariate=True, constant_liar=True
        )
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=self.trial_steps // 4)
            if self.prune
            else optuna.pruners.NopPruner()
        )
        return optuna.create_study(
            storage=storage,
            study_name=STUDY_NAME,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )

    def objective(self) -> Objective:
        return Objective(self)


class _Reporter(Callback):
    """Collects a run's curve, reports the running objective at fixed steps, and stops the run
    when the trial is to be pruned."""

    stop_reason = "pruned"

    def __init__(self, trial, curves: list[list[float]], offset: int, trial_steps: int):
        self.trial, self.curves, self.offset = trial, curves, offset
        self.grid = sorted(
            {round(k * trial_steps / REPORTS_PER_SEED) for k in range(1, REPORTS_PER_SEED + 1)}
        )
        self.evaluations: list[float] = []
        self.training: list[float] = []
        self.curves.append(self.training)
        self.pruned_at: int | None = None

    def on_update(self, info: UpdateInfo) -> bool | None:
        value = info.metrics.get("eval_mean_return")
        if value is not None and math.isfinite(value):
            self.evaluations.append(float(value))
            self.curves[-1] = self.evaluations  # a run that evaluates is scored on that alone
        value = info.metrics.get("mean_return")
        if value is not None and math.isfinite(value):
            self.training.append(float(value))
        reported = False
        while self.grid and self.grid[0] <= info.steps:
            step = self.offset + self.grid.pop(0)
            if any(self.curves):
                self.trial.report(running_score(self.curves), step=step)
                reported = True
        if reported and self.trial.should_prune():
            self.pruned_at = info.steps
            return False
        return None


def running_score(curves: list[list[float]]) -> float:
    """Mean over seeds of each curve's mean (the area under it, per env step)."""
    means = [sum(c) / len(c) for c in curves if c]
    return sum(means) / len(means)


class Objective:
    """Optuna objective: trains the trial's settings on ``search.seeds`` seeds in turn."""

    def __init__(self, search: Search):
        from pylander.envs import reward_threshold

        self.search = search
        self.space = {name: default_space()[name] for name in search.params}
        self.threshold = reward_threshold(search.base.env_id)

    def trial_config(self, trial) -> TrainConfig:
        """The base config with the trial's suggestions applied (what best.toml holds)."""
        return apply_params(
            self.search.base, {name: p.suggest(trial, name) for name, p in self.space.items()}
        )

    def __call__(self, trial) -> float:
        import optuna

        from pylander.trainer import train

        search, config = self.search, self.trial_config(trial)
        curves: list[list[float]] = []
        final_evals = []
        extra = {} if search.eval_interval is None else {"eval_interval": search.eval_interval}
        for index in range(search.seeds):
            seed = search.base.seed + index
            out = search.out / "trials" / str(trial.number) / f"seed{seed}"
            shutil.rmtree(out, ignore_errors=True)  # left by an earlier study in this folder
            run = dataclasses.replace(
                config,
                seed=seed,
                total_steps=search.trial_steps,
                out=str(out),
                quiet=True,
                stop_when_solved=False,
                eval_episodes=min(config.eval_episodes, TRIAL_EVAL_EPISODES),
                **extra,
            )
            reporter = _Reporter(trial, curves, index * search.trial_steps, search.trial_steps)
            summary = train(run, callbacks=[reporter])
            final_evals.append(summary["eval_mean_return"])
            trial.set_user_attr("final_eval", final_evals)
            if reporter.pruned_at is not None:
                raise optuna.TrialPruned(f"pruned at {reporter.pruned_at} steps of seed {seed}")
        if not any(curves):
            raise ValueError(f"no episode finished within {search.trial_steps} steps")
        unsolved = sum(
            1 for c in curves if self.threshold is not None and (not c or max(c) < self.threshold)
        )
        trial.set_user_attr("unsolved_seeds", unsolved)
        return running_score(curves) - search.unsolved_penalty * unsolved / search.seeds
