"""Every hyperparameter and run setting in one typed config, saved as ``config.toml``.

The defaults are the ones that solve LunarLander-v3 (see README, "How the defaults were found").
A few settings depend on the algorithm (``--algo notebook`` uses the notebook's gamma 0.99 and one
env): they are filled in from the algorithm's registry entry when the config is made, unless
given, so that Python and the command line train the same thing.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import multiprocessing
import numbers
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomllib

from pylander.algorithms import ALIASES as ALGO_ALIASES
from pylander.algorithms import REGISTRY as ALGORITHMS
from pylander.algorithms import canonical_name
from pylander.envs import ALIASES as ENV_ALIASES
from pylander.envs import env_name

Baseline = Literal["value", "mean", "none"]
VectorMode = Literal["sync", "async", "split", "auto"]
EnvBackend = Literal["gymnasium", "envpool"]
Device = Literal["cpu", "cuda", "auto"]


def setting(
    default: Any,
    help: str,
    *,
    group: str,
    per_algorithm: bool = False,
    runtime: bool = False,
    **kwargs: Any,
) -> Any:
    """A config field with its command-line help text (train.py builds its flags from these).

    ``group``: the section of ``--help`` it is listed in. ``per_algorithm``: an algorithm's
    registry entry may give its own default; the field then holds None until ``__post_init__``
    fills it in. ``runtime``: how this invocation runs rather than what it learns, so a value
    given with ``--resume`` is not saved into the run's config.toml.
    """
    metadata = {"help": help, "group": group, "runtime": runtime, **kwargs}
    if per_algorithm:
        return field(default=None, metadata={**metadata, "default": default})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


_run = functools.partial(setting, group="run")
_envs = functools.partial(setting, group="environments")
_pg = functools.partial(setting, group="policy gradient")
_report = functools.partial(setting, group="evaluation, logging, checkpoints")


@dataclass
class TrainConfig:
    # --- environments ----------------------------------------------------------------------
    env_id: str = _envs(
        "LunarLander-v3",
        "gymnasium env id (discrete actions), or module:EnvId "
        "to import the module that registers it; LunarLander-v2 means v3",
        flag="--env",
    )
    env_kwargs: dict[str, Any] = _envs(
        {},
        "keyword arguments for the env (gym.make), as "
        "KEY=VALUE; a VALUE is read as TOML or JSON if it can be, "
        "else as a string",
        flag="--env-kwargs",
    )
    num_envs: int = _envs(16, "parallel environments per process (notebook: 1)", per_algorithm=True)
    vector: VectorMode = _envs(
        "sync",
        "sync: envs in this process; split: half of them in one worker process, stepped "
        "alongside the other half (the same run as sync); auto: split with a second core, else "
        "sync; async: one worker process each",
        runtime=True,
    )
    rollout_workers: int = _envs(
        2,
        "worker processes that step the envs, split among them, a rollout at a time (0: the "
        "envs step in this process; notebook: 0; also 0 when --vector is not sync)",
        per_algorithm=True,
    )
    collect_ahead: bool = _envs(
        False,
        "with rollout workers: collect the next rollout while this process updates on the last "
        "(more overlap, but each rollout then comes from the policy one update old, which the "
        "update corrects for as decoupled PPO does)",
    )
    env_backend: EnvBackend = _envs(
        "gymnasium",
        "whose envs training steps: gymnasium's, or envpool's C++ ones (faster; "
        "pip install 'pylander[envpool]'); evaluation and video always use gymnasium's",
    )
    num_steps: int = _envs(128, "steps per env per update (rollout length)")

    # --- run -------------------------------------------------------------------------------
    algo: str = _run(
        "reinforce",
        "reinforce (batched, solves LunarLander) or notebook (the seed notebook, exactly)",
        choices=[*ALGORITHMS, *ALGO_ALIASES],
    )
    seed: int = _run(1, "seed for the network, sampling and the envs")
    total_steps: int = _run(1_000_000, "env-step budget, summed over all envs and processes")
    stop_when_solved: bool = _run(
        False,
        "stop once the periodic evaluation (else the last 100 training episodes) reaches "
        "the env's reward threshold and eval_episodes fresh greedy episodes confirm it",
    )
    device: Device = _run(
        "cpu", "where the policy, sampling and loss run (envs stay on the CPU)", runtime=True
    )
    torch_threads: int = _run(
        0,
        "torch intra-op threads per process (0: 2 where the update has two cores to itself, "
        "else 1; a run's numbers do not depend on it)",
        runtime=True,
    )
    out: str = _run(
        "",
        "run directory (default runs/<env>-<algo>-seed<seed>); never read from "
        "or written to config.toml",
    )

    # --- policy gradient -------------------------------------------------------------------
    gamma: float = _pg(0.999, "discount factor (notebook: 0.99)", per_algorithm=True)
    gae_lambda: float = _pg(0.98, "GAE lambda (baseline=value)")
    reward_scale: float = _pg(
        0.01, "multiply rewards by this for learning (logged returns stay raw)"
    )
    baseline: Baseline = _pg("value", "value: learned critic + GAE; mean: batch-mean return; none")
    normalize_advantages: bool = _pg(True, "normalise advantages per batch")
    ent_coef: float = _pg(0.01, "entropy bonus coefficient")
    vf_coef: float = _pg(0.5, "value loss coefficient (baseline=value)")
    max_grad_norm: float = _pg(0.5, "gradient-norm clipping threshold")
    learning_rate: float = _pg(1e-3, "Adam learning rate")
    anneal_lr: bool = _pg(False, "anneal the learning rate linearly to 0 over total_steps")
    epochs: int = _pg(4, "passes over each rollout (more than 1 reuses slightly stale data)")
    minibatches: int = _pg(8, "Adam steps per pass, each on a disjoint slice of the rollout")
    clip_coef: float = _pg(
        0.12,
        "PPO's ratio clipping: weight advantages by pi/pi_old, zero "
        "outside [1-eps, 1+eps] in the advantage's direction (0: off)",
    )
    target_kl: float = _pg(
        0.02, "end an update early once KL(old || new policy) exceeds this (0: never)"
    )
    normalize_obs: bool = _pg(
        True,
        "standardise observations with running statistics (kept in "
        "checkpoints, applied by evaluation and export)",
    )
    hidden_sizes: list[int] = _pg([64, 64], "hidden layer widths of the actor and the critic")
    alpha: float = _pg(
        0.01, "the notebook's gradient scale (algo=notebook only)", per_algorithm=True
    )

    # --- evaluation, logging, checkpoints ---------------------------------------------------
    eval_episodes: int = _report(
        100,
        "fresh evaluation episodes that score the run's best "
        "policy at the end (and confirm a solve)",
    )
    eval_interval: int = _report(
        50_000,
        "env steps between periodic greedy evaluations, which "
        "choose best.pt (0: none; best.pt follows the training mean)",
    )
    eval_interval_episodes: int = _report(
        20,
        "episodes per periodic evaluation (the same ones "
        "each time, none of them the final evaluation's)",
    )
    eval_stochastic: bool = _report(False, "evaluate by sampling actions instead of argmax")
    log_interval: int = _report(10, "print a log line every this many updates", runtime=True)
    checkpoint_interval: int = _report(50, "save checkpoint.pt every this many updates")
    quiet: bool = _report(False, "no progress bar and no log lines", runtime=True)

    def __post_init__(self) -> None:
        self._check_types(allow_none=True)
        self.algo = canonical_name(self.algo)
        if self.rollout_workers is None and self.vector != "sync":
            # --vector split/async: the envs step in (and for) this process.
            self.rollout_workers = 0
        own = ALGORITHMS[self.algo].defaults if self.algo in ALGORITHMS else {}
        for f in fields(self):
            if "default" in f.metadata and getattr(self, f.name) is None:
                setattr(self, f.name, own.get(f.name, f.metadata["default"]))
        # Resolved here, not when the env is made, so that the default run directory (and the
        # check that it holds no other run) names the env that is really trained.
        self.env_id = ENV_ALIASES.get(self.env_id, self.env_id)

    @classmethod
    def runtime_fields(cls) -> list[str]:
        """Settings of one invocation (``--quiet``, ``--device``...): see :func:`setting`."""
        return [f.name for f in fields(cls) if f.metadata["runtime"]]

    def resolved_out(self) -> Path:
        """The run directory: ``out``, or ``runs/<env>-<algo>-seed<seed>``."""
        return Path(self.out or f"runs/{env_name(self.env_id)}-{self.algo}-seed{self.seed}")

    def _check_types(self, allow_none: bool = False) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not (allow_none and value is None):
                setattr(self, f.name, _typed(f.name, value, hints[f.name]))

    def validate(self) -> None:
        """Raise ValueError naming the first setting of the wrong type or out of range."""
        self._check_types()
        positive = [
            "total_steps",
            "epochs",
            "num_envs",
            "num_steps",
            "minibatches",
            "eval_episodes",
            "eval_interval_episodes",
            "log_interval",
            "checkpoint_interval",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ["gamma", "gae_lambda"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ["learning_rate", "alpha", "max_grad_norm", "reward_scale"]:
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if self.eval_interval < 0:
            raise ValueError(
                f"eval_interval must be >= 0 (0: no periodic evaluation), got {self.eval_interval}"
            )
        if self.torch_threads < 0:
            raise ValueError(
                f"torch_threads must be >= 0 (0: chosen for this machine), got {self.torch_threads}"
            )
        for name in ["ent_coef", "vf_coef", "target_kl", "clip_coef"]:
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
                raise ValueError(
                    f"{f.name} must be one of {list(choices)}, got {getattr(self, f.name)!r}"
                )
        if self.rollout_workers:
            if not 0 < self.rollout_workers <= self.num_envs:
                raise ValueError(
                    f"rollout_workers must be in [0, num_envs={self.num_envs}], "
                    f"got {self.rollout_workers}"
                )
            if self.algo == "notebook":
                raise ValueError(
                    "rollout_workers needs --algo reinforce; the notebook updates every step"
                )
            if self.vector != "sync":
                raise ValueError(
                    "rollout workers step their envs in their own processes; they need "
                    f"--vector sync, got {self.vector!r} (or use --rollout-workers 0)"
                )
            if "fork" not in multiprocessing.get_all_start_methods():
                raise ValueError(
                    "rollout_workers needs the fork start method (Linux or macOS); "
                    "use --rollout-workers 0"
                )
        elif self.collect_ahead:
            raise ValueError("collect_ahead needs rollout workers (--rollout-workers 1 or more)")
        if self.env_backend == "envpool":
            if self.algo == "notebook":
                raise ValueError(
                    "env_backend envpool needs --algo reinforce; the notebook steps "
                    "one gymnasium env (use --env-backend gymnasium)"
                )
            if self.vector == "async":
                raise ValueError(
                    "vector async runs gymnasium envs in worker processes; "
                    "env_backend envpool needs --vector sync"
                )
            from pylander.envpool_backend import check_supported  # imports envpool: only if used

            check_supported(self.env_id)

    # --- TOML ------------------------------------------------------------------------------

    def to_toml(self) -> str:
        """The settings as TOML, without ``out``: a config file says what to train, not where
        (``--config RUN/config.toml --seed 2`` must not point back at RUN)."""
        lines = ["# pylander training config; rerun with `python -m pylander.train --config FILE`"]
        for f in fields(self):
            if f.name != "out":
                lines.append(f"{f.name} = {_toml_value(getattr(self, f.name))}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain values (parsed TOML); ValueError names a bad key, type or value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The config in a TOML file, with ``overrides`` on top. The file's ``out`` (written by
        older versions) is ignored: a run directory is given with ``out=``/``--out``."""
        try:
            with open(path, "rb") as fh:
                values = tomllib.load(fh)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        values.pop("out", None)
        try:
            return cls.from_dict({**values, **overrides})
        except ValueError as exc:
            raise ValueError(f"config {path}: {exc}") from None


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed(name: str, value: Any, hint: Any) -> Any:
    """``value`` as setting ``name``'s type ``hint`` (an int is a float, an integral float an
    int); ValueError naming the setting, the type and the value if it is not one."""
    origin = get_origin(hint)
    kind = str if origin is Literal else origin or hint
    ok = True
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        value = int(value) if ok else value
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind is str:
        value = os.fspath(value) if isinstance(value, os.PathLike) else value
        ok = isinstance(value, str)
    elif kind is list:  # list[int]
        ok = isinstance(value, (list, tuple)) and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
        )
        value = [int(v) for v in value] if ok else value
    elif kind is dict:
        ok = isinstance(value, dict) and _is_toml_table(value)
    if ok:
        return value
    expected = {
        list: "a list of integers",
        dict: "a table of keyword arguments (TOML values: no null)",
    }.get(kind)
    raise ValueError(
        f"{name} must be {expected or _EXPECTED[kind]}, got {value!r} ({type(value).__name__})"
    )


def _is_toml_table(table: dict) -> bool:
    def storable(value: Any) -> bool:
        if isinstance(value, dict):
            return _is_toml_table(value)
        if isinstance(value, (list, tuple)):
            return all(storable(v) for v in value)
        return isinstance(value, (bool, int, float, str))

    return all(isinstance(key, str) for key in table) and all(map(storable, table.values()))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [
            f"{k if _BARE_KEY.fullmatch(k) else _toml_value(k)} = {_toml_value(v)}"
            for k, v in value.items()
        ]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot write {value!r} to TOML")
