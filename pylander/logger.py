"""What a run writes and prints: ``metrics.csv`` with free-form columns, the console (progress
bar and messages), and the learning curve."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from tqdm import tqdm

WALL_CLOCK = ("seconds", "steps_per_second")
"""The metrics that measure time. Every other column is identical for two CPU runs with the
same seed on one machine."""


class MetricsCSV:
    """``metrics.csv``, one row per update, with a column for every key any row has had.

    A key that first appears in a later row adds a column: the file is rewritten once with the
    wider header (earlier rows get an empty cell). Each row is flushed as it is written. On resume
    the rows after the checkpoint's update are dropped, as they are about to be redone, and the
    run keeps its columns.
    """

    def __init__(self, path: Path, resume_update: int = 0):
        self.path = path
        rows = _read_rows(path)
        header = rows[0] if rows else []
        kept = [row for row in rows[1:] if row and int(row[0]) <= resume_update]
        self.columns: list[str] = list(header)
        self._rewrite([dict(zip(header, row)) for row in kept])

    def write(self, row: dict[str, float | int | str]) -> None:
        new = [key for key in row if key not in self.columns]
        if new:
            old_rows = _read_rows(self.path)[1:]
            old_columns, self.columns = self.columns, self.columns + new
            self._rewrite([dict(zip(old_columns, r)) for r in old_rows])
        self._writer.writerow({key: _fmt(value) for key, value in row.items()})
        self._file.flush()

    def _rewrite(self, rows: list[dict]) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, self.columns, restval="")
            if self.columns:
                writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        # Open for the whole run, so that each row is one flushed append.
        self._file = open(self.path, "a", newline="")  # noqa: SIM115
        self._writer = csv.DictWriter(self._file, self.columns, restval="")

    def close(self) -> None:
        self._file.close()


def _read_rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _fmt(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


class Console:
    """Progress bar and messages of the main process; silent when ``quiet`` or on other ranks."""

    def __init__(self, *, quiet: bool, enabled: bool = True):
        self.quiet = quiet or not enabled
        self.bar: tqdm | None = None

    def open_bar(self, total: int, initial: int) -> None:
        if not self.quiet and not os.environ.get("PYLANDER_NO_TQDM"):
            self.bar = tqdm(
                total=total,
                initial=initial,
                unit="step",
                unit_scale=True,
                dynamic_ncols=True,
                smoothing=0.1,
            )

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def plot_learning_curve(
    metrics_path: Path, png_path: Path, title: str, threshold: float | None
) -> None:
    """Mean return of recent episodes against env steps, from metrics.csv."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if _is_number(r.get("mean_return", ""))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(
        [int(r["steps"]) for r in rows],
        [float(r["mean_return"]) for r in rows],
        label="mean return, last 100 episodes",
    )
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


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False
