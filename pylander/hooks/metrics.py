"""Hooks that report: ``metrics.csv`` and TensorBoard, and the console's progress bar and lines."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pylander.hooks import Callback, UpdateInfo
from pylander.logger import MetricsCSV

if TYPE_CHECKING:
    from pylander.run import Run


class MetricsWriter(Callback):
    """Every key of every update's metrics to ``metrics.csv`` and to TensorBoard (``train/KEY``
    at the env step), and the final evaluation to TensorBoard (``eval/...``). Main process only.
    """

    def __init__(self):
        self._csv: MetricsCSV | None = None
        self._tb = None

    def on_start(self, run: Run) -> None:
        if not run.comm.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._csv = MetricsCSV(run.out / "metrics.csv", run.counters["update"])
        # Scalars are logged at env steps: a resumed run drops the points after its checkpoint.
        steps = run.counters["steps"]
        self._tb = SummaryWriter(str(run.out), purge_step=steps + 1 if steps else None)

    def on_update(self, info: UpdateInfo) -> None:
        if self._csv is None:
            return
        self._csv.write(info.metrics)
        for key, value in info.metrics.items():
            if key != "update" and isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"train/{key}", value, info.steps)

    def on_end(self, run: Run) -> None:
        summary = run.summary or {}
        if self._tb is not None and summary.get("eval_episodes"):
            for key in ("eval_mean_return", "eval_std_return"):
                self._tb.add_scalar(
                    f"eval/{key.removeprefix('eval_')}", summary[key], summary["steps"]
                )
            self._tb.flush()

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
            self._tb.close()
            self._csv = self._tb = None


class ConsoleProgress(Callback):
    """The progress bar, and a log line every ``log_interval`` updates."""

    def __init__(self, log_interval: int):
        self.log_interval = log_interval
        self.console = None

    def on_start(self, run: Run) -> None:
        self.console = run.console
        self.console.open_bar(run.config.total_steps, run.counters["steps"])

    def on_update(self, info: UpdateInfo) -> None:
        m, bar = info.metrics, self.console.bar
        if bar is not None:
            bar.update(info.steps - bar.n)
            bar.set_postfix(ret=f"{m['mean_return']:.1f}", eps=info.episodes, refresh=False)
        if info.update % self.log_interval == 0:
            extra = "  ".join(
                f"{key} {m[key]:.4g}"
                for key in ("policy_loss", "value_loss", "entropy", "approx_kl")
                if key in m
            )
            self.console.message(
                f"update {info.update:>6}  steps {info.steps:>9}  episodes {info.episodes:>6}  "
                f"mean return {m['mean_return']:8.2f}  {extra}  "
                f"{m['steps_per_second']:,.0f} steps/s"
            )

    def close(self) -> None:
        if self.console is not None:
            self.console.close()
