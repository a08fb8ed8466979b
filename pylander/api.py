"""The Python API: ``pylander.train`` with the command line's guards, returning a result.

    from pylander import Agent, TrainConfig, train

    result = train(TrainConfig(env_id="CartPole-v1", total_steps=100_000))
    result.summary["eval_mean_return"], result.run_dir
    action = result.agent.predict(obs)                  # the run's best policy
    Agent.load(result.run_dir).evaluate(episodes=20)

A callback is a :class:`pylander.hooks.Callback` or a plain callable ``fn(info)``; it sees each
update's metrics (``info.metrics``), and returning False stops training (``stop_reason``
"callback").
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pylander import rundir
from pylander.agent import Agent
from pylander.config import TrainConfig
from pylander.envs import check_trainable
from pylander.threads import training_threads, using_threads


@dataclass
class TrainResult:
    """What :func:`train` returns."""

    summary: dict[str, Any]
    """What ``summary.json`` holds: steps, the evaluation of the best policy, ``solved``..."""
    agent: Agent
    """The run's best policy (``best.pt``)."""
    run_dir: Path

    @property
    def metrics(self) -> list[dict[str, float]]:
        """``metrics.csv``, one dict per update (a metric missing from an update is NaN)."""
        with open(self.run_dir / "metrics.csv", newline="") as fh:
            return [
                {k: float(v) if v != "" else math.nan for k, v in row.items()}
                for row in csv.DictReader(fh)
            ]


def train(
    config: TrainConfig | None = None,
    *,
    callbacks: Iterable[Any] = (),
    resume: bool = False,
    force: bool = False,
    **settings: Any,
) -> TrainResult:
    """Train as ``config`` (plus any ``settings``, e.g. ``total_steps=50_000``) says.

    The same guards as ``python -m pylander.train``: the env must be trainable, the run
    directory must hold no other run (``force=True`` replaces it; ``resume=True`` continues it)
    and no other process may be using it; ``torch_threads`` is applied for the call. Works from
    a worker thread and in a notebook (without SIGINT/SIGTERM handling outside the main thread).

    Raises ValueError (bad settings, a directory in use: :class:`rundir.RunDirectoryError`),
    :class:`~pylander.checkpoint.CheckpointError`, and the trainer's own errors
    (:func:`pylander.trainer.train`).
    """
    from pylander.trainer import resolve_device
    from pylander.trainer import train as run_trainer

    if resume and force:
        raise ValueError("resume continues a run and force replaces one; give only one")
    # TrainConfig(**settings) fills in the algorithm's own defaults (the notebook's gamma...).
    config = TrainConfig(**settings) if config is None else dataclasses.replace(config, **settings)
    if resume:  # the run's own settings, with those given here on top
        config = TrainConfig.load(
            config.resolved_out() / "config.toml", **{**settings, "out": str(config.resolved_out())}
        )
    config.validate()
    check_trainable(config.env_id, config.env_kwargs)
    resolve_device(config.device)
    out = config.resolved_out()
    threads = training_threads(config)
    with using_threads(threads), rundir.claim(out):
        rundir.check(out, config, resume=resume, force=force)
        if force:
            rundir.clear(out)
        summary = run_trainer(config, resume=resume, callbacks=list(callbacks))
    return TrainResult(summary, Agent.load(out), out)
