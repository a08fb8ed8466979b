"""``python -m pylander.bench``: the native ops and the trainer against their baselines.

Every comparison runs in one process, interleaved and after warm-up, and is reported as a
ratio. Ops: each repeat times every candidate once (a short loop of calls), in a rotating
order, and the result is ``median(baseline times) / median(native times)`` over many repeats,
after checking that every candidate computes the same result. Trainer: the
baseline runs a block between every two updates of the real training loop. Absolute times are
printed too, but on a shared machine they move with the load; the ratios are the result.

Sections (``--only`` picks some; ``--profile`` adds the last one):

* ``ops``: ``discounted_returns``, ``sample_categorical`` and ``pg_loss`` forward + backward
  against the notebook's Python loop and the best pure-PyTorch versions, at several sizes;
* ``trainer``: env steps/s of the default trainer (``pylander.trainer.train``, everything it
  does per update included) against stepping the same vector env configuration with random
  actions and no learner, one block of ``num_envs x num_steps`` steps before every update;
* ``seed``: the notebook's own loop (``pylander.reference``), one episode before every
  ``--algo seed`` update (also one episode);
* ``distributed``: ``python -m pylander.train --procs 1`` against ``--procs 2`` (subprocesses,
  alternating, each timed from its ``metrics.csv`` so start-up is left out);
* ``profile``: where one training update's time goes (timed breakdown, cProfile, torch.profiler).

``--quick`` shrinks every section (CI smoke use, well under a minute); ``--json FILE`` writes the
same numbers as JSON; ``--device cuda`` runs the ops (every candidate on the GPU, at larger sizes
too) and the trainer's policy on the GPU, while the seed and distributed sections stay on the
CPU. Run it from outside the source checkout, like the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import dataclasses
import gc
import io
import itertools
import json
import math
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

import pylander
from pylander import ops, reference

SECTIONS = ("ops", "trainer", "seed", "distributed", "profile")

GAMMA = 0.99  # the notebook's discount
DONE_PROB = 0.01  # one episode end per ~100 steps, about a LunarLander episode under a new policy
ENT_COEF = 0.01  # an entropy bonus in the pg_loss comparison, so its gradient path is timed too
NUM_ACTIONS = 4  # LunarLander

# Goals from the benchmark issue: (JSON path of the ratio, minimum).
TARGETS = {
    "discounted_returns[T=1000,N=64] vs best pure PyTorch": (
        "ops.discounted_returns.T1000_N64.speedup_vs_torch", 3.0),
    "sample_categorical[B=64,A=4] vs Categorical": (
        "ops.sample_categorical.B64_A4.speedup_vs_categorical", 2.0),
    "pg_loss fwd+bwd[B=1024,A=4] vs autograd": (
        "ops.pg_loss.B1024_A4.speedup_vs_autograd", 1.5),
    "trainer vs env-only stepping": ("trainer.ratio_to_env", 0.85),
}


@dataclass
class Settings:
    """How much work each section does; ``quick()`` and ``full()`` are the two presets."""

    preset: str = "full"
    repeats: int = 61  # interleaved samples per op candidate
    sample_seconds: float = 5e-4  # each sample loops a call for about this long
    warmup_calls: int = 5
    returns_sizes: list[tuple[int, int]] = field(
        default_factory=lambda: [(T, N) for T in (100, 1000) for N in (1, 16, 64, 256)])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64, 1024])
    trainer_updates: int = 120  # of the default trainer (16 envs x 128 steps each, as of writing)
    seed_steps: int = 20_000  # --algo seed: one update per episode (~100 steps untrained)
    dist_rounds: int = 3  # 1 and 2 processes alternate: 1 2, 2 1, 1 2
    dist_updates: int = 24  # per run of 2 processes; the 1-process run takes the same env steps
    dist_timeout_s: float = 300.0
    profile_updates: int = 5
    threads: int = 1
    device: str = "cpu"  # of the ops section; the trainer's is trainer_overrides["device"]
    # TrainConfig fields changed for the trainer and profile sections (the tests shrink them);
    # empty means the default trainer, which is what the results are about.
    trainer_overrides: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "Settings":
        return cls(preset="quick", repeats=7, sample_seconds=3e-4, warmup_calls=3,
                   trainer_updates=10, seed_steps=2_000, dist_rounds=1, dist_updates=6,
                   dist_timeout_s=120.0, profile_updates=2)

    @classmethod
    def full(cls) -> "Settings":
        return cls()

    def on_gpu(self) -> None:
        """Also time sizes large enough to fill a GPU, and put the trainer's policy there."""
        self.device = "cuda"
        self.returns_sizes += [(1000, 4096), (1000, 65536)]
        self.batch_sizes += [65536, 1 << 20]
        self.trainer_overrides = {**self.trainer_overrides, "device": "cuda"}


# --- timing -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_gc():
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int, sample_seconds: float,
                warmup_calls: int, sync: Callable[[], None] = lambda: None
                ) -> dict[str, list[float]]:
    """Seconds per call of each candidate: ``repeats`` samples each, taken round-robin.

    After ``warmup_calls`` calls, each candidate's loop count is set so that one sample lasts
    about ``sample_seconds``; repeat ``r`` then times every candidate once, starting at a
    different one each time, so that load changes hit all of them alike. ``sync`` runs before
    every clock reading (``torch.cuda.synchronize`` for GPU work, which is queued, not done, when
    a call returns).
    """
    loops = {}
    for name, fn in candidates.items():
        for _ in range(warmup_calls):
            fn()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        once = max(time.perf_counter() - start, 1e-7)
        loops[name] = max(1, min(10_000, round(sample_seconds / once)))
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    with _no_gc():
        for r in range(repeats):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                fn, n = candidates[name], loops[name]
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                sync()
                samples[name].append((time.perf_counter() - start) / n)
    return samples


def speedup(baseline: list[float], native: list[float]) -> float:
    """Median baseline time over median native time, from samples taken interleaved.

    A ratio of medians rather than a median of per-repeat ratios: on a loaded machine a sample
    now and then includes a stretch descheduled, and a pair is spoiled when either of its two
    samples is, so the medians of the two series stay clean longer than the paired ratios do.
    """
    return statistics.median(baseline) / statistics.median(native)


# --- op baselines -------------------------------------------------------------------------------


def returns_notebook_loop(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """The notebook's ``discount_rewards`` loop, with episode ends, over all N columns at once.

    One Python iteration per time step on an ``[N]`` row; for ``N == 1`` it is the notebook's
    loop exactly, and for ``N > 1`` it is faster than calling the notebook's function per column.
    """
    discounted = torch.zeros_like(rewards)
    live = (~dones).to(rewards.dtype) * gamma
    R = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        R = R * live[t] + rewards[t]
        discounted[t] = R
    return discounted


def returns_torch_cumsum(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """Closed form with one reverse cumulative sum: O(1) tensor ops whatever T is.

    ``R[t] = gamma**-t * sum_{k=t}^{end(t)} gamma**k r[k]`` where ``end(t)`` is the first episode
    end at or after ``t``. Computed in float64: the ``gamma**-t`` rescaling would lose float32's
    precision (fine for the benchmark's gamma and T; very small gamma or huge T overflow).
    """
    T, N = rewards.shape
    steps = torch.arange(T, dtype=torch.float64, device=rewards.device)
    scale = torch.pow(gamma, steps).unsqueeze(1)  # [T, 1]
    suffix = (rewards.double() * scale).flip(0).cumsum(0).flip(0)
    suffix = torch.cat([suffix, suffix.new_zeros(1, N)])  # suffix[T] = 0
    index = torch.arange(T, device=rewards.device).unsqueeze(1).expand(T, N)
    end = torch.where(dones, index, T).flip(0).cummin(0).values.flip(0)  # T when none follows
    after = (end + 1).clamp_(max=T)
    return ((suffix[:T] - suffix.gather(0, after)) / scale).to(rewards.dtype)


def returns_torch_doubling(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """Hillis-Steele reverse scan: ``ceil(log2 T)`` rounds of whole-tensor ops, stable for any
    gamma. After the round with offset ``k``, ``R[t]`` sums steps ``t .. t + 2k - 1`` and ``D[t]``
    is the discount from ``t`` to ``t + 2k`` (zero past an episode end or past ``T``)."""
    T = rewards.shape[0]
    R = rewards.clone()
    D = (~dones).to(rewards.dtype) * gamma
    k = 1
    while k < T:
        nxt = R.clone()
        nxt[:-k].addcmul_(D[:-k], R[k:])
        R = nxt
        if 2 * k < T:
            d = torch.zeros_like(D)
            torch.mul(D[:-k], D[k:], out=d[:-k])
            D = d
        k *= 2
    return R


def sample_with_categorical(logits: Tensor) -> tuple[Tensor, Tensor]:
    dist = torch.distributions.Categorical(logits=logits)
    actions = dist.sample()
    return actions, dist.log_prob(actions)


def sample_with_multinomial(logits: Tensor) -> tuple[Tensor, Tensor]:
    probs = torch.softmax(logits, -1)
    actions = torch.multinomial(probs, 1)
    return actions.squeeze(1), probs.gather(1, actions).log_().squeeze(1)


def pg_autograd(logits: Tensor, actions: Tensor, weights: Tensor, entropy: bool = True) -> Tensor:
    """``log_softmax`` + ``gather`` (+ the entropy, as ``pg_loss`` returns it) and autograd."""
    log_probs = torch.log_softmax(logits, -1)
    loss = -(weights * log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)).mean()
    if entropy:
        loss = loss + ENT_COEF * (log_probs.exp() * log_probs).sum(-1).mean()
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def pg_native(logits: Tensor, actions: Tensor, weights: Tensor, entropy: bool = True) -> Tensor:
    loss, ent = ops.pg_loss(logits, actions, weights, "mean")
    (grad,) = torch.autograd.grad(loss - ENT_COEF * ent if entropy else loss, logits)
    return grad


# --- section 1: ops -----------------------------------------------------------------------------


def _op_entry(samples: dict[str, list[float]], native: str = "native",
              baselines: dict[str, list[str]] | None = None) -> dict:
    """Times in microseconds and ``speedup_vs_<baseline>`` for each baseline.

    ``baselines`` maps a baseline's name to the candidates it stands for; with several, the
    fastest one (by median) is the baseline and is named in ``<baseline>_variant``.
    """
    entry = {f"{name}_us": statistics.median(times) * 1e6 for name, times in samples.items()}
    for baseline, members in (baselines or {}).items():
        best = min(members, key=lambda m: statistics.median(samples[m]))
        if len(members) > 1:
            entry[f"{baseline}_us"] = statistics.median(samples[best]) * 1e6
            entry[f"{baseline}_variant"] = best
        entry[f"speedup_vs_{baseline}"] = speedup(samples[best], samples[native])
    return entry


def bench_ops(settings: Settings, log: Callable[[str], None]) -> dict:
    device = torch.device(settings.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    run = dict(repeats=settings.repeats, sample_seconds=settings.sample_seconds,
               warmup_calls=settings.warmup_calls, sync=sync)
    results: dict[str, dict] = {"discounted_returns": {}, "sample_categorical": {},
                                "pg_loss": {}}
    g = torch.Generator().manual_seed(0)

    def data(*tensors: Tensor) -> list[Tensor]:  # drawn on the CPU: the same data on any device
        return [t.to(device) for t in tensors]

    for T, N in settings.returns_sizes:
        rewards, dones = data(torch.randn(T, N, generator=g),
                              torch.rand(T, N, generator=g) < DONE_PROB)
        want = ops.discounted_returns(rewards, dones, GAMMA)
        candidates = {
            "native": lambda: ops.discounted_returns(rewards, dones, GAMMA),
            "python": lambda: returns_notebook_loop(rewards, dones, GAMMA),
            "torch_cumsum": lambda: returns_torch_cumsum(rewards, dones, GAMMA),
            "torch_doubling": lambda: returns_torch_doubling(rewards, dones, GAMMA),
        }
        for name, fn in candidates.items():  # every contestant computes the same thing
            torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4, msg=name)
        with torch.no_grad():
            samples = interleaved(candidates, **run)
        results["discounted_returns"][f"T{T}_N{N}"] = _op_entry(
            samples, baselines={"python": ["python"],
                                "torch": ["torch_cumsum", "torch_doubling"]})
        log(f"  discounted_returns T{T}_N{N} done")

    for B in settings.batch_sizes:
        (logits,) = data(torch.randn(B, NUM_ACTIONS, generator=g))
        for fn in (ops.sample_categorical, sample_with_categorical, sample_with_multinomial):
            actions, log_probs = fn(logits)
            assert actions.shape == (B,) and log_probs.shape == (B,)
            want = torch.log_softmax(logits, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
            torch.testing.assert_close(log_probs, want, rtol=1e-5, atol=1e-5)
        candidates = {
            "native": lambda: ops.sample_categorical(logits),
            "categorical": lambda: sample_with_categorical(logits),
            "multinomial": lambda: sample_with_multinomial(logits),
        }
        with torch.no_grad():  # as in a rollout
            samples = interleaved(candidates, **run)
        results["sample_categorical"][f"B{B}_A{NUM_ACTIONS}"] = _op_entry(
            samples, baselines={"categorical": ["categorical"], "multinomial": ["multinomial"]})
        log(f"  sample_categorical B{B}_A{NUM_ACTIONS} done")

    for B in settings.batch_sizes:
        logits, actions, weights = data(torch.randn(B, NUM_ACTIONS, generator=g),
                                        torch.randint(0, NUM_ACTIONS, (B,), generator=g),
                                        torch.randn(B, generator=g))
        logits.requires_grad_()
        torch.testing.assert_close(pg_native(logits, actions, weights),
                                   pg_autograd(logits, actions, weights), rtol=1e-5, atol=1e-6)
        candidates = {
            "native": lambda: pg_native(logits, actions, weights),
            "autograd": lambda: pg_autograd(logits, actions, weights),
            "native_loss_only": lambda: pg_native(logits, actions, weights, entropy=False),
            "autograd_loss_only": lambda: pg_autograd(logits, actions, weights, entropy=False),
        }
        samples = interleaved(candidates, **run)
        entry = _op_entry(samples, baselines={"autograd": ["autograd"]})
        # Without the entropy term: what a caller that ignores the entropy output would see.
        entry["speedup_vs_autograd_loss_only"] = speedup(samples["autograd_loss_only"],
                                                              samples["native_loss_only"])
        results["pg_loss"][f"B{B}_A{NUM_ACTIONS}"] = entry
        log(f"  pg_loss B{B}_A{NUM_ACTIONS} done")
    return results


# --- sections 2 and 3: the trainer, interleaved update by update with its baseline ---------------


@dataclass
class _Turn:
    baseline_s: float  # the baseline's block, run just before this update
    baseline_steps: int
    trainer_s: float = math.nan  # this update and the trainer's own work after it
    trainer_steps: int = 0
    iterate_s: float = 0.0  # the update alone (``algo.iterate``), without train()'s own work


@contextlib.contextmanager
def _interleaved_with(baseline: Callable[[], int]):
    """While active, every ``algo.iterate()`` that ``pylander.trainer.train`` makes is preceded by
    one call of ``baseline()`` (which returns the env steps it took), timed separately.

    The trainer's time for an update runs from the end of the baseline block to the start of the
    next block, so it includes everything ``train`` does per update (logging, checkpoints, the
    periodic env resets) but not the baseline. Pairing the two an update apart keeps load changes
    on a shared machine out of their ratio.
    """
    from pylander import trainer

    turns: list[_Turn] = []
    marks: list[float] = []  # when each update's trainer work started
    original = trainer.build_algorithm

    def build_algorithm(*args, **kwargs):
        algo, envs = original(*args, **kwargs)
        iterate = algo.iterate

        def interleaved_iterate(progress):
            now = time.perf_counter()
            if marks:
                turns[-1].trainer_s = now - marks[-1]
            steps = baseline()
            after = time.perf_counter()
            turns.append(_Turn(baseline_s=after - now, baseline_steps=steps))
            marks.append(after)
            iteration = iterate(progress)
            turns[-1].iterate_s = time.perf_counter() - after
            turns[-1].trainer_steps = iteration.steps
            return iteration

        algo.iterate = interleaved_iterate
        return algo, envs

    trainer.build_algorithm = build_algorithm
    try:
        yield turns
    finally:
        trainer.build_algorithm = original


def _rates(window: list[_Turn]) -> tuple[float, float]:
    """Steps/s of the trainer and of the interleaved baseline over ``window``."""
    return (sum(t.trainer_steps for t in window) / sum(t.trainer_s for t in window),
            sum(t.baseline_steps for t in window) / sum(t.baseline_s for t in window))


def _window(turns: list[_Turn], skip_fraction: float = 0.2) -> list[_Turn]:
    """The complete turns after the first ``skip_fraction`` (warm-up: allocation, caches)."""
    done = [t for t in turns if math.isfinite(t.trainer_s)]
    if len(done) < 2:
        raise RuntimeError(f"only {len(done)} complete updates; raise the step budget")
    return done[min(max(1, int(len(done) * skip_fraction)), len(done) - 1):]


def _train_interleaved(config, workdir: Path, tag: str, baseline: Callable[[], int],
                       close: Callable[[], None]) -> tuple[list[_Turn], float, float]:
    """Train ``config`` with ``baseline`` run before every update (after one warm-up call), then
    ``close()`` the baseline's env; returns the measured window, trainer and baseline steps/s."""
    from pylander.trainer import train

    try:
        baseline()  # warm-up
        with _interleaved_with(baseline) as turns, contextlib.redirect_stdout(io.StringIO()):
            train(dataclasses.replace(config, out=str(workdir / tag)))
    finally:
        close()
    window = _window(turns)
    return (window, *_rates(window))


def bench_trainer(settings: Settings, workdir: Path, log: Callable[[str], None]) -> dict:
    """The default trainer against stepping the same vector env with random actions, no learner."""
    from pylander.config import TrainConfig
    from pylander.envs import make_vector_env

    config = TrainConfig(**{"quiet": True, "eval_episodes": 1, **settings.trainer_overrides})
    config.total_steps = settings.trainer_updates * config.num_envs * config.num_steps
    envs = make_vector_env(config.env_id, config.num_envs, config.vector)
    envs.reset(seed=config.seed + 1)
    rng = np.random.default_rng(config.seed)
    pool = rng.integers(0, envs.single_action_space.n, size=(16, config.num_steps, config.num_envs))
    blocks = itertools.cycle(pool)

    def env_only() -> int:
        actions = next(blocks)
        for row in actions:
            envs.step(row)
        return actions.size

    window, trainer_rate, env_rate = _train_interleaved(config, workdir, "trainer", env_only,
                                                        envs.close)
    per_update = [(t.baseline_s / t.baseline_steps) / (t.trainer_s / t.trainer_steps)
                  for t in window]
    trainer_s = sum(t.trainer_s for t in window)
    loop_s = trainer_s - sum(t.iterate_s for t in window)
    log(f"  trainer {trainer_rate:,.0f} steps/s, env only {env_rate:,.0f} steps/s over "
        f"{len(window)} interleaved updates")
    return {
        "trainer": {"steps_per_s": trainer_rate, "ratio_to_env": trainer_rate / env_rate,
                    "ratio_to_env_median_update": statistics.median(per_update),
                    # train()'s own per-update work: logging, checkpoints, best.pt, env resets
                    "loop_ms_per_update": loop_s / len(window) * 1e3,
                    "loop_fraction": loop_s / trainer_s,
                    "updates": len(window),
                    "config": {k: v for k, v in dataclasses.asdict(config).items()
                               if k not in ("out", "quiet", "eval_episodes", "total_steps")}},
        "env_only": {"steps_per_s": env_rate, "actions": "uniform random"},
    }


def bench_seed(settings: Settings, workdir: Path, log: Callable[[str], None]) -> dict:
    """The notebook's own loop (``pylander.reference``), an episode before each ``--algo seed``
    update (also one episode), both untrained policies on fresh episodes."""
    from pylander.config import SEED_DEFAULTS, TrainConfig

    torch.manual_seed(12345)
    env = reference.make_env()
    env.reset(seed=12345)
    model = reference.PolicyNetwork((env.observation_space.shape[0], env.action_space.n))
    # The notebook draws from torch's global RNG, as --algo seed does; keep them apart.
    notebook_rng = torch.get_rng_state()

    def notebook_episode() -> int:
        nonlocal notebook_rng
        algo_rng = torch.get_rng_state()
        torch.set_rng_state(notebook_rng)
        rewards, log_probs = reference.run_episode(model, env)
        d_rewards = reference.discount_rewards(rewards, reference.gamma)
        reference.update(model, log_probs, d_rewards)
        steps = len(rewards)
        notebook_rng = torch.get_rng_state()
        torch.set_rng_state(algo_rng)
        return steps

    config = dataclasses.replace(TrainConfig(), **SEED_DEFAULTS, algo="seed",
                                 total_steps=settings.seed_steps, quiet=True, eval_episodes=1)
    window, algo_rate, notebook_rate = _train_interleaved(config, workdir, "seed",
                                                          notebook_episode, env.close)
    log(f"  notebook {notebook_rate:,.0f} steps/s, --algo seed {algo_rate:,.0f} steps/s over "
        f"{len(window)} interleaved episodes")
    return {
        "seed_notebook": {"steps_per_s": notebook_rate},
        "seed_algo": {"steps_per_s": algo_rate, "ratio_to_notebook": algo_rate / notebook_rate,
                      "episodes": len(window)},
    }


# --- section 4: data-parallel processes -----------------------------------------------------------


def metrics_rate(metrics_csv: Path, skip_fraction: float = 0.2) -> float:
    """Env steps/s between a row after the first ``skip_fraction`` of the run and the last row.

    Start-up and the first updates (allocation, caches) fall before the window; the rows'
    ``seconds`` are the trainer's own wall clock, so the final evaluation is not counted either.
    """
    with open(metrics_csv, newline="") as fh:
        rows = [(int(r["steps"]), float(r["seconds"])) for r in csv.DictReader(fh)]
    if len(rows) < 3:
        raise ValueError(f"{metrics_csv} has {len(rows)} rows; at least 3 are needed")
    first = min(max(1, int(len(rows) * skip_fraction)), len(rows) - 2)
    (s0, t0), (s1, t1) = rows[first], rows[-1]
    if t1 <= t0:
        raise ValueError(f"{metrics_csv}: no time passed between rows {first} and {len(rows) - 1}")
    return (s1 - s0) / (t1 - t0)


def _train_subprocess(procs: int, steps: int, out: Path, timeout_s: float) -> float:
    cmd = [sys.executable, "-m", "pylander.train", "--procs", str(procs), "--total-steps",
           str(steps), "--quiet", "--eval-episodes", "1", "--out", str(out), "--force"]
    env = {**os.environ, "PYLANDER_NO_TQDM": "1"}
    # Not from a source checkout: `python -m` would import the unbuilt tree instead.
    done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"`{' '.join(cmd[1:])}` exited with {done.returncode}:\n"
                           + "\n".join(tail))
    return metrics_rate(out / "metrics.csv")


def bench_distributed(settings: Settings, workdir: Path, log: Callable[[str], None]) -> dict:
    """``python -m pylander.train --procs 1`` and ``--procs 2`` (default settings otherwise),
    alternating, each with the same env-step budget and timed from its ``metrics.csv``."""
    from pylander.config import TrainConfig

    defaults = TrainConfig()
    steps = settings.dist_updates * 2 * defaults.num_envs * defaults.num_steps
    one, two = [], []
    try:
        for r in range(settings.dist_rounds):
            for procs in ((1, 2) if r % 2 == 0 else (2, 1)):
                rate = _train_subprocess(procs, steps, workdir / f"procs{procs}_{r}",
                                         settings.dist_timeout_s)
                (one if procs == 1 else two).append(rate)
            log(f"  distributed round {r + 1}/{settings.dist_rounds}: 1 process {one[-1]:,.0f} "
                f"steps/s, 2 processes {two[-1]:,.0f} steps/s")
    except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"  distributed run failed: {exc}")
        return {"distributed": {"error": str(exc), "procs1_steps_per_s": None,
                                "procs2_steps_per_s": None, "ratio_2_to_1": None}}
    return {"distributed": {
        "procs1_steps_per_s": statistics.median(one),
        "procs2_steps_per_s": statistics.median(two),
        "ratio_2_to_1": statistics.median(b / a for a, b in zip(one, two)),
        "cores": os.cpu_count(), "rounds": len(one), "steps_per_run": steps}}


# --- section 5: profile of training updates -------------------------------------------------------


def bench_profile(settings: Settings, log: Callable[[str], None], top: int = 12) -> dict:
    """Where the time of ``Reinforce.iterate`` (one rollout + one update) goes."""
    from pylander.config import TrainConfig
    from pylander.distributed import Collective
    from pylander.trainer import build_algorithm, resolve_device

    config = TrainConfig(**{"quiet": True, **settings.trainer_overrides})
    device = resolve_device(config.device)
    algo, envs = build_algorithm(config, device, Collective(device))
    algo.reset_envs(config.seed)
    for _ in range(3):
        algo.iterate(0.0)

    # 1. A timed breakdown: env stepping, the policy's act(), the rest of the rollout, the update.
    clock = {"env": 0.0, "act": 0.0}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock[key] += time.perf_counter() - start
        return wrapper

    collector = algo.collector
    collector.envs.step = timed("env", envs.step)
    collector.policy.act = timed("act", algo.policy.act)
    collect_s = update_s = 0.0
    updates = max(settings.profile_updates, 1)
    try:
        for _ in range(updates):
            start = time.perf_counter()
            rollout = collector.collect()
            middle = time.perf_counter()
            algo.update(rollout)
            collector.pop_finished()
            collect_s += middle - start
            update_s += time.perf_counter() - middle
    finally:
        del collector.envs.step, collector.policy.act  # back to the bound methods
    total = collect_s + update_s
    breakdown = {"env_step": clock["env"], "policy_act": clock["act"],
                 "rollout_glue": collect_s - clock["env"] - clock["act"], "update": update_s}
    ms_per_update = {k: v / updates * 1e3 for k, v in breakdown.items()}
    fractions = {k: v / total for k, v in breakdown.items()}

    # 2. cProfile: Python functions by own time (env code, rollout glue, autograd wrappers).
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(updates):
        algo.iterate(0.0)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
    stats.print_stats(top)
    cprofile_top = []
    for (filename, line, func), (_, ncalls, tottime, cumtime, _) in sorted(
            stats.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        cprofile_top.append({"function": f"{Path(filename).name}:{line}({func})",
                             "calls": ncalls, "tottime_ms": tottime / updates * 1e3,
                             "cumtime_ms": cumtime / updates * 1e3})

    # 3. torch.profiler: the torch ops, native ones included, by self CPU time.
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(updates):
            algo.iterate(0.0)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=top)
    torch_top = [{"op": e.key, "calls": e.count / updates,
                  "self_cpu_ms": e.self_cpu_time_total / updates / 1e3}
                 for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:top]]
    envs.close()
    return {"profile": {"updates": updates, "ms_per_update": ms_per_update,
                        "fractions": fractions, "cprofile_top": cprofile_top,
                        "torch_profiler_top": torch_top,
                        "_text": {"cprofile": stream.getvalue(), "torch": table}}}


# --- report ---------------------------------------------------------------------------------------


def lookup(results: dict, path: str):
    value = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_targets(results: dict) -> dict:
    out = {}
    for name, (path, goal) in TARGETS.items():
        value = lookup(results, path)
        if value is None:
            continue
        out[name] = {"key": path, "value": value, "goal": goal, "met": bool(value >= goal)}
    return out


def _fmt_us(us: float) -> str:
    return f"{us:,.1f} us" if us < 10_000 else f"{us / 1e3:,.1f} ms"


def format_report(results: dict) -> str:
    lines = []
    meta = results.get("meta", {})
    if meta:
        gpu = f"{meta['gpu']} | " if meta.get("gpu") else ""
        lines.append(f"pylander {meta['pylander']} | torch {meta['torch']} | {meta['cpu']} | "
                     f"{meta['cores']} cores | {gpu}ops on {meta.get('device', 'cpu')} | "
                     f"torch threads {meta['torch_threads']} | load "
                     f"{meta['load_before']} -> {meta.get('load_after', '?')} | "
                     f"{meta['preset']} run, {meta.get('seconds', '?')} s")
    op_results = results.get("ops", {})
    columns = {"discounted_returns": ["python", "torch"],
               "sample_categorical": ["categorical", "multinomial"],
               "pg_loss": ["autograd", "autograd_loss_only"]}
    for op, sizes in op_results.items():
        base = columns[op]
        lines.append("")
        header = f"{op:<20} {'size':<12} {'native':>11}"
        for b in base:
            header += f" {b:>18} {'x':>7}"
        lines.append(header)
        for size, entry in sizes.items():
            row = f"{'':<20} {size:<12} {_fmt_us(entry['native_us']):>11}"
            for b in base:
                us = entry.get(f"{b}_us")
                variant = entry.get(f"{b}_variant", "")
                label = _fmt_us(us) + (f" {variant.replace('torch_', '')[:3]}" if variant else "")
                row += f" {label:>18} {entry[f'speedup_vs_{b}']:>6.2f}x"
            lines.append(row)
    if "trainer" in results:
        t, e = results["trainer"], results["env_only"]
        c = t["config"]
        lines += ["", f"trainer (default config, policy on {c['device']}: "
                      f"{c['num_envs']} {c['vector']} envs x "
                      f"{c['num_steps']} steps, {c.get('epochs', 1)} epochs x "
                      f"{c.get('minibatches', 1)} minibatches): {t['steps_per_s']:,.0f} steps/s; "
                      f"env only (random actions): {e['steps_per_s']:,.0f} steps/s; "
                      f"ratio {t['ratio_to_env']:.3f} (train()'s own loop: "
                      f"{t['loop_ms_per_update']:.1f} ms/update, {100 * t['loop_fraction']:.0f}% "
                      f"of the trainer's time)"]
    if "seed_notebook" in results:
        n, s = results["seed_notebook"], results["seed_algo"]
        lines.append(f"seed notebook loop: {n['steps_per_s']:,.0f} steps/s; --algo seed: "
                     f"{s['steps_per_s']:,.0f} steps/s; ratio {s['ratio_to_notebook']:.2f}x")
    if "distributed" in results:
        d = results["distributed"]
        if d.get("ratio_2_to_1") is None:
            lines.append(f"distributed: FAILED: {d.get('error')}")
        else:
            lines.append(f"distributed: 1 process {d['procs1_steps_per_s']:,.0f} steps/s; "
                         f"2 processes {d['procs2_steps_per_s']:,.0f} steps/s; "
                         f"ratio 2:1 {d['ratio_2_to_1']:.2f} ({d['cores']} cores)")
    if "profile" in results:
        p = results["profile"]
        lines += ["", f"profile of Reinforce.iterate (mean of {p['updates']} updates): " + ", ".join(
            f"{k} {p['ms_per_update'][k]:.1f} ms ({100 * p['fractions'][k]:.0f}%)"
            for k in p["ms_per_update"])]
        lines += ["", "cProfile, top functions by own time:", p["_text"]["cprofile"].strip(),
                  "", "torch.profiler, top ops by self CPU time:", p["_text"]["torch"].strip()]
    targets = results.get("targets", {})
    if meta.get("device", "cpu") != "cpu":
        lines += ["", "targets: set for the CPU, not checked on a GPU run"]
    if targets:
        lines += ["", "targets:"]
        for name, t in targets.items():
            lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['value']:.2f} "
                         f"(goal >= {t['goal']})")
    return "\n".join(lines)


def _strip_private(value):
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_benchmarks(settings: Settings, sections: tuple[str, ...] = SECTIONS[:-1],
                   log: Callable[[str], None] = print) -> dict:
    """Run the chosen sections and return the results (the JSON document)."""
    torch.set_num_threads(settings.threads)
    started = time.perf_counter()
    results: dict = {"meta": {
        "pylander": pylander.__version__, "torch": torch.__version__, "cpu": _cpu_model(),
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "load_before": _load(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "preset": settings.preset,
        "device": settings.device,
        "gpu": torch.cuda.get_device_name() if settings.device == "cuda" else None,
        "settings": dataclasses.asdict(settings)}}
    with tempfile.TemporaryDirectory(prefix="pylander-bench-") as tmp:
        workdir = Path(tmp)
        if "ops" in sections:
            log("ops ...")
            results["ops"] = bench_ops(settings, log)
        if "trainer" in sections:
            log("trainer vs env-only ...")
            results.update(bench_trainer(settings, workdir, log))
        if "seed" in sections:
            log("seed notebook vs --algo seed ...")
            results.update(bench_seed(settings, workdir, log))
        if "distributed" in sections:
            log("distributed: --procs 1 vs --procs 2 ...")
            results.update(bench_distributed(settings, workdir, log))
        if "profile" in sections:
            log("profile of training updates ...")
            results.update(bench_profile(settings, log))
    # The goals were set for the CPU ops and the CPU trainer; a GPU run reports its ratios only.
    results["targets"] = check_targets(results) if settings.device == "cpu" else {}
    results["meta"]["load_after"] = _load()
    results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pylander.bench", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and repeats (CI smoke)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument("--profile", action="store_true",
                        help="add a profile of training updates (timed breakdown, cProfile, "
                             "torch.profiler)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, metavar="SECTION",
                        help=f"run only these sections, of {', '.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (the trainer's default is 1)")
    parser.add_argument("--trainer-updates", type=int, metavar="N",
                        help="updates timed in the trainer section (default 120, --quick 10)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the ops and the trainer's policy run (seed and distributed "
                             "stay on the CPU)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    settings = Settings.quick() if args.quick else Settings.full()
    settings.threads = args.threads
    if args.trainer_updates is not None:
        if args.trainer_updates < 3:
            parser.error("--trainer-updates must be at least 3 (the first fifth is warm-up)")
        settings.trainer_updates = args.trainer_updates
    if args.device == "cuda":
        settings.on_gpu()
    sections = tuple(args.only) if args.only else SECTIONS[:-1]
    if args.profile and "profile" not in sections:
        sections += ("profile",)
    results = run_benchmarks(settings, sections, log=lambda m: print(m, file=sys.stderr,
                                                                     flush=True))
    print(format_report(results))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(_strip_private(results), indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
