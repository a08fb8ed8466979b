"""How much work each benchmark section does."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

Log = Callable[[str], None]
"""Where the sections send their progress lines."""


@dataclass
class Settings:
    """How much work each section does; ``quick()`` and ``full()`` are the two presets."""

    preset: str = "full"
    repeats: int = 11  # interleaved rounds per op: each times every candidate once
    sample_seconds: float = 0.01  # each candidate's blocked_autorange, per round, runs this long
    warmup_calls: int = 5
    returns_sizes: list[tuple[int, int]] = field(
        default_factory=lambda: [(T, N) for T in (100, 1000) for N in (1, 16, 64, 256)]
    )
    batch_sizes: list[int] = field(default_factory=lambda: [1, 16, 64, 1024])
    trainer_updates: int = 120  # of the default trainer (16 envs x 128 steps each, as of writing)
    notebook_steps: int = 20_000  # --algo notebook: one update per episode (~100 steps untrained)
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
    def quick(cls) -> Settings:
        """Small repeats and budgets: a smoke run of every section in well under a minute."""
        return cls(
            preset="quick",
            repeats=3,
            sample_seconds=2e-3,
            warmup_calls=3,
            trainer_updates=10,
            notebook_steps=2_000,
            dist_rounds=1,
            dist_updates=6,
            dist_timeout_s=120.0,
            profile_updates=2,
        )

    @classmethod
    def full(cls) -> Settings:
        """The settings of the published results."""
        return cls()

    def on_gpu(self) -> None:
        """Also time sizes large enough to fill a GPU, and put the trainer's policy there."""
        self.device = "cuda"
        self.returns_sizes += [(1000, 4096), (1000, 65536)]
        self.batch_sizes += [65536, 1 << 20]
        self.trainer_overrides = {**self.trainer_overrides, "device": "cuda"}
