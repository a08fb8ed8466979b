"""The ``trainer`` section, and the measurement it shares with the ``notebook`` section: the real
training loop with a baseline run between every two of its updates, through a training hook.

The hook (:class:`Interleave`) runs one block of the baseline in its ``on_update``, that is
after every update. The trainer's time for an update runs from the end of one hook call to the
start of the next, so it holds everything ``train()`` does per update (the update itself, its
bookkeeping, the other hooks: metrics, checkpoints, the periodic env resets) but neither the
baseline nor the hook's own work. Pairing the two an update apart keeps load changes on a
shared machine out of their ratio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from pylander.bench.settings import Log, Settings
from pylander.config import TrainConfig
from pylander.envs import make_env, make_vector_env
from pylander.hooks import Callback, UpdateInfo
from pylander.threads import training_threads, using_threads
from pylander.trainer import train
from pylander.vector_env import SerialVectorEnv


@dataclass
class Turn:
    """One baseline block and the trainer's update that followed it."""

    baseline_s: float
    baseline_steps: int
    trainer_s: float
    trainer_steps: int


class Interleave(Callback):
    """A training hook that runs ``baseline()`` (which returns the env steps it took) after every
    update, and times it and the trainer's work until the next hook call; see the module."""

    def __init__(self, baseline: Callable[[], int]):
        self.baseline = baseline
        self.turns: list[Turn] = []
        self._block: tuple[float, int] | None = None  # the last baseline block: seconds, steps
        self._resumed = 0.0  # when the trainer got the process back from this hook
        self._steps = 0  # the trainer's env steps at the last hook call

    def on_update(self, info: UpdateInfo) -> None:
        now = time.perf_counter()
        if self._block is not None:
            self.turns.append(
                Turn(
                    *self._block,
                    trainer_s=now - self._resumed,
                    trainer_steps=info.steps - self._steps,
                )
            )
        self._steps = info.steps
        if info.steps >= info.run.config.total_steps:  # the last update: no trainer time follows
            self._block = None
            return
        steps = self.baseline()
        self._resumed = time.perf_counter()
        self._block = (self._resumed - now, steps)


def rates(window: list[Turn]) -> tuple[float, float]:
    """Steps/s of the trainer and of the interleaved baseline over ``window``."""
    return (
        sum(t.trainer_steps for t in window) / sum(t.trainer_s for t in window),
        sum(t.baseline_steps for t in window) / sum(t.baseline_s for t in window),
    )


def measured_window(turns: list[Turn], skip_fraction: float = 0.2) -> list[Turn]:
    """The turns after the first ``skip_fraction`` (warm-up: allocation, caches)."""
    if len(turns) < 2:
        raise RuntimeError(f"only {len(turns)} complete updates; raise the step budget")
    return turns[min(max(1, int(len(turns) * skip_fraction)), len(turns) - 1) :]


def train_interleaved(
    config: TrainConfig, out: Path, baseline: Callable[[], int], close: Callable[[], None]
) -> tuple[list[Turn], float, float]:
    """Train ``config`` (into ``out``) with ``baseline`` run after every update (and once before,
    as warm-up), then ``close()`` the baseline's env. Returns the measured window of turns, the
    trainer's and the baseline's steps/s."""
    hook = Interleave(baseline)
    try:
        baseline()
        with contextlib.redirect_stdout(io.StringIO()):  # the trainer's final message
            train(dataclasses.replace(config, out=str(out)), callbacks=[hook])
    finally:
        close()
    window = measured_window(hook.turns)
    return (window, *rates(window))


def bench_trainer(settings: Settings, workdir: Path, log: Log) -> dict:
    """The default trainer with its envs in this process (no rollout workers) against stepping
    the same envs (gymnasium, in this process) with random actions, no learner: one block of
    ``num_envs x num_steps`` env steps between every two updates."""
    trainer, env_only = versus_env_only(settings, workdir / "trainer", log, rollout_workers=0)
    return {"trainer": trainer, "env_only": env_only}


def bench_envpool(settings: Settings, workdir: Path, log: Log) -> dict:
    """The trainer stepping envpool's envs (``--env-backend envpool``) against the same
    gymnasium env-only stepping as :func:`bench_trainer` (nothing without envpool installed)."""
    if importlib.util.find_spec("envpool") is None:
        log("  skipped: envpool is not installed (pip install '.[envpool]')")
        return {}
    trainer, env_only = versus_env_only(settings, workdir / "envpool", log, env_backend="envpool")
    return {"envpool": trainer, "envpool_env_only": env_only}


def bench_workers(settings: Settings, workdir: Path, log: Log) -> dict:
    """The default trainer (2 rollout workers stepping the envs on other cores), and the same
    with ``--collect-ahead``, against the same one-core gymnasium env-only stepping as
    :func:`bench_trainer`.

    Not interleaved: during a baseline block the workers would go on collecting, and the
    trainer's time would shrink by what they did meanwhile. The env-only rate is measured in
    blocks just before and just after each training run instead.
    """
    results = {}
    for name, overrides in [("workers", {}), ("collect_ahead", {"collect_ahead": True})]:
        config = {"rollout_workers": 2, **overrides}
        trainer, env_only = versus_env_only(settings, workdir / name, log, **config)
        results.update({name: trainer, f"{name}_env_only": env_only})
    return results


def bench_vector_env(settings: Settings, workdir: Path, log: Log) -> dict:
    """Env-only stepping (random actions) of the default trainer's envs through pylander's
    ``SerialVectorEnv`` (what ``--vector sync`` and the rollout workers step) against
    gymnasium's ``SyncVectorEnv``: interleaved blocks of ``num_envs x num_steps`` steps."""
    config = TrainConfig(**settings.trainer_overrides)
    fns = [lambda: make_env(config.env_id, config.env_kwargs)] * config.num_envs
    kinds = {"serial": SerialVectorEnv(fns), "gymnasium_sync": gym.vector.SyncVectorEnv(fns)}
    num_actions = kinds["serial"].single_action_space.n
    actions = np.random.default_rng(config.seed).integers(
        0, num_actions, size=(config.num_steps, config.num_envs)
    )
    seconds = dict.fromkeys(kinds, 0.0)
    for envs in kinds.values():
        envs.reset(seed=config.seed)
    blocks = max(settings.trainer_updates // 2, 2)
    for block in range(blocks + 1):
        # Alternating which goes first, so neither always runs right after the other.
        order = list(kinds.items()) if block % 2 else list(kinds.items())[::-1]
        for name, envs in order:
            started = time.perf_counter()
            for row in actions:
                envs.step(row)
            if block:  # the first block of each is warm-up
                seconds[name] += time.perf_counter() - started
    for envs in kinds.values():
        envs.close()
    rates = {name: blocks * actions.size / s for name, s in seconds.items()}
    ratio = rates["serial"] / rates["gymnasium_sync"]
    log(f"  SerialVectorEnv {rates['serial']:,.0f} steps/s, gymnasium's SyncVectorEnv "
        f"{rates['gymnasium_sync']:,.0f} steps/s")  # fmt: skip
    return {"vector_env": {"steps_per_s": rates, "ratio_serial_to_sync": ratio}}


def versus_env_only(
    settings: Settings, out: Path, log: Log, **overrides: object
) -> tuple[dict, dict]:
    """The trainer (the settings' config with ``overrides``) against env-only stepping (gymnasium's
    envs through ``SerialVectorEnv``, as ``--vector sync`` steps them)
    of the same env ids, interleaved update by update, or with rollout workers (which would go
    on collecting during a baseline block) half the blocks before training and half after:
    (trainer entry, env-only entry) of the results."""
    # No periodic evaluation within the run (and one final episode): its cost depends on how
    # long the policy's episodes last, which varies from run to run, and it had made up to a
    # third of the trainer's time here (20 episodes every 50k steps), hiding the loop's own speed.
    # The interval lies past the budget rather than being 0, which would swap in the hook that a
    # default run does not have: best.pt written at every new best training mean (most early
    # updates, 2-6 ms a write), where a default run writes it after an evaluation.
    config = TrainConfig(
        **{"quiet": True, "eval_episodes": 1, **settings.trainer_overrides, **overrides}
    )
    interleave = config.rollout_workers == 0
    config.total_steps = settings.trainer_updates * config.num_envs * config.num_steps
    if "eval_interval" not in {**settings.trainer_overrides, **overrides}:
        config.eval_interval = config.total_steps + 1
    envs = make_vector_env(config.env_id, config.num_envs)
    envs.reset(seed=config.seed + 1)
    # The random actions are drawn before any clock starts.
    rng = np.random.default_rng(config.seed)
    pool = rng.integers(0, envs.single_action_space.n, size=(16, config.num_steps, config.num_envs))
    blocks = itertools.cycle(pool)

    def env_only() -> int:
        actions = next(blocks)
        for row in actions:
            envs.step(row)
        return actions.size

    # One core: this process's threads (the bench's --threads). The whole machine: the
    # trainer's own (--torch-threads 0 by default).
    threads = torch.get_num_threads() if interleave else training_threads(config)
    if interleave:
        window, trainer_rate, env_rate = train_interleaved(config, out, env_only, envs.close)
        per_update = [
            (t.baseline_s / t.baseline_steps) / (t.trainer_s / t.trainer_steps) for t in window
        ]
        pairing = {"ratio_to_env_median_update": statistics.median(per_update)}
    else:
        count = max(settings.trainer_updates // 2, 1)
        before = _timed_blocks(env_only, count)
        with using_threads(threads):
            window, trainer_rate, _ = train_interleaved(config, out, lambda: 0, lambda: None)
        after = _timed_blocks(env_only, count)
        envs.close()
        env_rate = (before[0] + after[0]) / (before[1] + after[1])
        pairing = {"env_only_before_after": [before[0] / before[1], after[0] / after[1]]}
    log(
        f"  trainer {trainer_rate:,.0f} steps/s, env only {env_rate:,.0f} steps/s over "
        f"{len(window)} {'interleaved ' if interleave else ''}updates, {threads} torch "
        f"thread{'s' if threads > 1 else ''}"
    )
    trainer = {
        "steps_per_s": trainer_rate,
        "ratio_to_env": trainer_rate / env_rate,
        **pairing,
        "updates": len(window),
        "torch_threads": threads,
        "config": {
            k: v
            for k, v in dataclasses.asdict(config).items()
            if k not in ("out", "quiet", "eval_episodes", "eval_interval", "total_steps")
        },
    }
    return trainer, {"steps_per_s": env_rate, "actions": "uniform random", "backend": "gymnasium"}


def _timed_blocks(block: Callable[[], int], count: int) -> tuple[int, float]:
    """Run ``block`` ``count`` times: (its env steps, seconds)."""
    started, steps = time.perf_counter(), 0
    for _ in range(count):
        steps += block()
    return steps, time.perf_counter() - started
