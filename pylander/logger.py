"""What a run reports: metrics.csv, TensorBoard events, a progress bar, log lines, the curve."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from tqdm import tqdm

METRICS = ["update", "steps", "episodes", "seconds", "mean_return", "loss", "entropy"]
"""metrics.csv columns; ``mean_return`` is over the last 100 finished training episodes.
Every column but ``seconds`` (wall clock) is identical for two CPU runs with the same seed."""


class RunLogger:
    def __init__(self, out: Path, total_steps: int, *, quiet: bool, log_interval: int,
                 resume_update: int = 0, initial_steps: int = 0, enabled: bool = True):
        self.out, self.quiet, self.log_interval = out, quiet, log_interval
        self.enabled = enabled
        self.metrics_path = out / "metrics.csv"
        self._bar = None
        self._tb = None
        if not enabled:
            return
        _truncate_metrics(self.metrics_path, resume_update)
        new_file = not self.metrics_path.exists()
        self._csv_file = open(self.metrics_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_file:
            self._csv.writerow(METRICS)
        from torch.utils.tensorboard import SummaryWriter

        self._tb = SummaryWriter(str(out), purge_step=resume_update + 1 if resume_update else None)
        show_bar = not quiet and not os.environ.get("PYLANDER_NO_TQDM")
        if show_bar:
            self._bar = tqdm(total=total_steps, initial=initial_steps, unit="step",
                             unit_scale=True, dynamic_ncols=True, smoothing=0.1)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self._csv.writerow([_fmt(row[k]) for k in METRICS])
        self._csv_file.flush()
        for key in ("mean_return", "loss", "entropy"):
            if row[key] == row[key]:  # skip NaN (no episode finished yet)
                self._tb.add_scalar(f"train/{key}", row[key], row["steps"])
        self._tb.add_scalar("train/steps_per_second", row["steps_per_second"], row["steps"])
        if self._bar is not None:
            self._bar.update(row["steps"] - self._bar.n)
            self._bar.set_postfix(ret=f"{row['mean_return']:.1f}", eps=row["episodes"], refresh=False)
        if not self.quiet and row["update"] % self.log_interval == 0:
            self.message(
                f"update {row['update']:>6}  steps {row['steps']:>9}  episodes {row['episodes']:>6}  "
                f"mean return {row['mean_return']:8.2f}  loss {row['loss']:8.4f}  "
                f"entropy {row['entropy']:.3f}  {row['steps_per_second']:,.0f} steps/s")

    def message(self, text: str) -> None:
        if self.quiet or not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._tb is not None:
            self._tb.close()
            self._csv_file.close()
            self._tb = None


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _truncate_metrics(path: Path, keep_updates: int) -> None:
    """On resume, drop rows written after the checkpoint; they are about to be redone."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= keep_updates]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        csv.writer(fh).writerows(kept)
    os.replace(tmp, path)


def plot_learning_curve(metrics_path: Path, png_path: Path, title: str,
                        threshold: float | None) -> None:
    """Mean return of recent episodes against env steps, from metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["mean_return"] not in ("nan", "")]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["steps"]) for r in rows], [float(r["mean_return"]) for r in rows],
            label="mean return, last 100 episodes")
    if threshold is not None:
        ax.axhline(threshold, color="gray", linestyle="--", label=f"solved ({threshold:g})")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
