"""Every hyperparameter and run setting in one typed config, saved as ``config.toml``.

The defaults are the ones that solve LunarLander-v3 (see README, "How the defaults were found").
A few settings depend on the algorithm (``--algo notebook`` uses the notebook's gamma 0.99 and one
env): they are filled in from the algorithm's registry entry when the config is made, unless
given, so that Python and the command line train the same thing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import tomllib

from pylander.algorithms import ALIASES as ALGO_ALIASES
from pylander.algorithms import REGISTRY as ALGORITHMS
from pylander.algorithms import canonical_name

Baseline = Literal["value", "mean", "none"]
VectorMode = Literal["sync", "async", "split", "auto"]
Device = Literal["cpu", "cuda", "auto"]


def setting(default: Any, help: str, *, per_algorithm: bool = False, **kwargs: Any) -> Any:
    """A config field with its command-line help text (train.py builds its flags from these).

    ``per_algorithm``: an algorithm's registry entry may give its own default; the field then
    holds None until ``__post_init__`` fills it in.
    """
    if per_algorithm:
        return field(default=None, metadata={"help": help, "default": default, **kwargs})
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    # --- run -------------------------------------------------------------------------------
    env_id: str = setting("LunarLander-v3", "gymnasium env id (discrete actions)", flag="--env")
    algo: str = setting("reinforce", "reinforce (batched, solves LunarLander) or notebook (the seed "
                        "notebook, exactly)", choices=[*ALGORITHMS, *ALGO_ALIASES])
    seed: int = setting(1, "seed for the network, sampling and the envs")
    total_steps: int = setting(3_000_000, "env-step budget, summed over all envs and processes")
    stop_when_solved: bool = setting(
        False, "stop once the last 100 training episodes average the env's reward threshold and a "
        "greedy evaluation confirms it")
    device: Device = setting("cpu", "where the policy, sampling and loss run (envs stay on the CPU)")
    torch_threads: int = setting(1, "torch intra-op threads per process (1 is fastest for small MLPs)")
    out: str = setting("", "run directory (default runs/<env>-<algo>-seed<seed>)")

    # --- environments ----------------------------------------------------------------------
    num_envs: int = setting(16, "parallel environments per process (notebook: 1)", per_algorithm=True)
    vector: VectorMode = setting(
        "sync", "sync: envs in this process; split: half of them in one worker process, stepped "
        "alongside the other half (the same run as sync); auto: split with a second core, else "
        "sync; async: one worker process each")
    num_steps: int = setting(128, "steps per env per update (rollout length)")

    # --- policy gradient -------------------------------------------------------------------
    gamma: float = setting(0.999, "discount factor (notebook: 0.99)", per_algorithm=True)
    gae_lambda: float = setting(0.98, "GAE lambda (baseline=value)")
    reward_scale: float = setting(0.01, "multiply rewards by this for learning (logged returns stay raw)")
    baseline: Baseline = setting("value", "value: learned critic + GAE; mean: batch-mean return; none")
    normalize_advantages: bool = setting(True, "normalise advantages per batch")
    ent_coef: float = setting(0.0, "entropy bonus coefficient")
    vf_coef: float = setting(0.5, "value loss coefficient (baseline=value)")
    max_grad_norm: float = setting(0.5, "gradient-norm clipping threshold")
    learning_rate: float = setting(3e-4, "Adam learning rate")
    anneal_lr: bool = setting(True, "anneal the learning rate linearly to 0 over total_steps")
    epochs: int = setting(4, "passes over each rollout (more than 1 reuses slightly stale data)")
    minibatches: int = setting(4, "Adam steps per pass, each on a disjoint slice of the rollout")
    target_kl: float = setting(0.01, "end an update early once KL(old || new policy) exceeds this (0: never)")
    normalize_obs: bool = setting(False, "standardise observations with running statistics "
                                  "(kept in checkpoints, applied by evaluation and export)")
    hidden_sizes: list[int] = setting([64, 64], "hidden layer widths of the actor and the critic")

    # --- notebook mode ---------------------------------------------------------------------
    alpha: float = setting(0.01, "the notebook's gradient scale (algo=notebook only)", per_algorithm=True)

    # --- evaluation, logging, checkpoints ---------------------------------------------------
    eval_episodes: int = setting(100, "fresh evaluation episodes that score the run's best policy "
                                 "at the end (and confirm a solve)")
    eval_interval: int = setting(100_000, "env steps between periodic greedy evaluations, which "
                                 "choose best.pt (0: none; best.pt follows the training mean)")
    eval_interval_episodes: int = setting(20, "episodes per periodic evaluation (the same ones "
                                          "each time, none of them the final evaluation's)")
    eval_stochastic: bool = setting(False, "evaluate by sampling actions instead of argmax")
    log_interval: int = setting(10, "print a log line every this many updates")
    checkpoint_interval: int = setting(50, "save checkpoint.pt every this many updates")
    quiet: bool = setting(False, "no progress bar and no log lines")

    def __post_init__(self) -> None:
        self.algo = canonical_name(self.algo)
        own = ALGORITHMS[self.algo].defaults if self.algo in ALGORITHMS else {}
        for f in fields(self):
            if "default" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, own.get(f.name, f.metadata["default"]))

    def resolved_out(self) -> Path:
        return Path(self.out or f"runs/{self.env_id}-{self.algo}-seed{self.seed}")

    def validate(self) -> None:
        """Raise ValueError naming the first setting that is out of range."""
        positive = ["total_steps", "torch_threads", "epochs", "num_envs", "num_steps", "minibatches", "eval_episodes",
                    "eval_interval_episodes", "log_interval", "checkpoint_interval"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.eval_interval < 0:
            raise ValueError(f"eval_interval must be >= 0 (0: no periodic evaluation), got "
                             f"{self.eval_interval}")
        for name in ["gamma", "gae_lambda"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ["learning_rate", "alpha", "max_grad_norm", "reward_scale"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name in ["ent_coef", "vf_coef", "target_kl"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive layer widths, got {self.hidden_sizes}")
        if self.num_envs * self.num_steps < self.minibatches:
            raise ValueError("minibatches must not exceed num_envs * num_steps")
        for f in fields(self):
            choices = f.metadata.get("choices") or get_args(get_type_hints(TrainConfig)[f.name])
            if choices and isinstance(choices[0], str) and getattr(self, f.name) not in choices:
                raise ValueError(f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}")

    # --- TOML ------------------------------------------------------------------------------

    def to_toml(self) -> str:
        lines = ["# pylander training config; rerun with `python -m pylander.train --config FILE`"]
        for f in fields(self):
            lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        hints = get_type_hints(cls)
        cleaned = {}
        for key, value in values.items():
            want = hints[key]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            elif want is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            cleaned[key] = value
        return cls(**cleaned)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The config in a TOML file, with ``overrides`` on top."""
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        return cls.from_dict({**values, **overrides})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} to TOML")
