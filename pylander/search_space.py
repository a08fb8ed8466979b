"""The hyperparameter search space of ``python -m pylander.tune``: each searched setting, how a
trial suggests it, and how a trial's parameters become a :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pylander.config import TrainConfig


@dataclass(frozen=True)
class Param:
    """One searched setting: how the trial suggests it, and how it becomes config values."""

    describe: str
    suggest: Callable[[Any, str], Any]
    """(optuna trial, name) -> the suggested value."""
    field: str | None = None
    """The TrainConfig field it sets (default: its own name)."""
    to_config: Callable[[Any, TrainConfig], Any] | None = None
    """(suggested value, base config) -> the field's value (default: the value itself)."""


def _log_float(low: float, high: float) -> Param:
    return Param(
        f"log-uniform in [{low:g}, {high:g}]",
        lambda trial, name: trial.suggest_float(name, low, high, log=True),
    )


def _float(low: float, high: float) -> Param:
    return Param(
        f"uniform in [{low:g}, {high:g}]", lambda trial, name: trial.suggest_float(name, low, high)
    )


def _choice(*options: Any) -> Param:
    return Param(
        f"one of {', '.join(map(str, options))}",
        lambda trial, name: trial.suggest_categorical(name, list(options)),
    )


NUM_ENVS = (8, 16, 32)
NUM_STEPS = (32, 64, 128, 256)


def default_space() -> dict[str, Param]:
    """The default search space; ``clip_coef`` and ``normalize_obs`` only where TrainConfig
    has those settings."""
    space = {
        "learning_rate": _log_float(1e-4, 3e-3),
        "num_steps": _choice(*NUM_STEPS),
        "num_envs": _choice(*NUM_ENVS),
        "minibatches": _choice(1, 2, 4, 8),
        "epochs": _choice(1, 2, 4, 8),
        "gamma": _choice(0.99, 0.995, 0.999, 0.9999),
        "gae_lambda": _float(0.9, 1.0),
        "target_kl": _log_float(0.003, 0.1),
        "ent_coef": _log_float(1e-5, 0.03),
        "max_grad_norm": _log_float(0.3, 5.0),
        "hidden_width": dataclasses.replace(
            _choice(32, 64, 128, 256),
            field="hidden_sizes",
            describe="one of 32, 64, 128, 256 (every hidden layer; depth from the base config)",
            to_config=lambda width, base: [width] * len(base.hidden_sizes),
        ),
    }
    have = {f.name for f in dataclasses.fields(TrainConfig)}
    if "clip_coef" in have:
        space["clip_coef"] = _float(0.1, 0.3)
    if "normalize_obs" in have:
        space["normalize_obs"] = _choice(False, True)
    return space


def apply_params(base: TrainConfig, params: dict[str, Any]) -> TrainConfig:
    """``base`` with a trial's parameters (names of :func:`default_space`) applied."""
    space, changes = default_space(), {}
    for name, value in params.items():
        param = space[name]
        changes[param.field or name] = param.to_config(value, base) if param.to_config else value
    return dataclasses.replace(base, **changes)
