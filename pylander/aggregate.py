"""Several runs of one setting, reported together (``python -m pylander.experiment`` writes
these): a results table, and the evaluation curve across seeds with bootstrap intervals."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import numpy as np

GRID_POINTS = 50


def read_metrics(run: Path) -> list[dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (none if it has none yet)."""
    try:
        with open(run / "metrics.csv", newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def curve_of(rows: list[dict[str, str]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(env steps, values) of the rows that have a finite ``metric``."""
    points = [(float(r["steps"]), float(r[metric])) for r in rows if r.get(metric)]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = np.array(points).T
    return steps, values


def common_grid(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(grid, values[run, point]): each curve interpolated onto one grid of env steps, from the
    latest first point to the last one; a run that stopped early (solved) holds its last value."""
    start = max(steps[0] for steps, _ in curves)
    end = max(steps[-1] for steps, _ in curves)
    grid = np.linspace(start, end, GRID_POINTS) if end > start else np.array([end])
    return grid, np.stack([np.interp(grid, steps, values) for steps, values in curves])


def iqm(values: np.ndarray, axis: int) -> np.ndarray:
    """Interquartile mean along ``axis`` (the mean of the middle half, as scipy's trim_mean)."""
    n = values.shape[axis]
    cut = int(0.25 * n)
    return np.take(np.sort(values, axis=axis), range(cut, n - cut), axis=axis).mean(axis=axis)


def bootstrap(values: np.ndarray, statistic, reps: int, seed: int = 0):
    """(statistic, 2.5th and 97.5th percentile of its bootstrap) over the runs (axis 0)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(reps, len(values)))
    samples = statistic(values[picks], axis=1)
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return statistic(values, axis=0), low, high


def iqm_intervals(values: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """IQM per grid point with stratified-bootstrap 95% intervals: rliable's where it can be
    imported, else the same bootstrap in numpy (one task: stratified is plain resampling)."""
    try:
        from rliable import library as rly
    except Exception:  # not installed, or broken (arch 7.2 fails to import with pandas 3)
        return (*bootstrap(values, iqm, reps), "numpy bootstrap")

    # rliable's aggregate_iqm at every grid point, vectorised: one call per point is ~20x slower.
    def per_point(scores: np.ndarray) -> np.ndarray:  # (runs, tasks, points) -> (points,)
        return iqm(scores.reshape(-1, scores.shape[-1]), axis=0)

    # rliable draws its resamples from numpy's global generator: seeded here, and restored after,
    # so the same runs give the same intervals (as the numpy bootstrap's seeded generator does).
    saved = np.random.get_state()
    np.random.seed(0)
    try:
        point, interval = rly.get_interval_estimates(
            {"runs": values[:, None, :]}, per_point, reps=reps
        )
    finally:
        np.random.set_state(saved)
    return point["runs"], interval["runs"][0], interval["runs"][1], "rliable"


def plot_curve(
    path: Path,
    grid: np.ndarray,
    values: np.ndarray,
    metric: str,
    title: str,
    threshold: float | None,
    reps: int,
) -> dict:
    """Save the curve across runs; returns its numbers (for results.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mean, mean_low, mean_high = bootstrap(values, np.mean, reps)
    mid, mid_low, mid_high, how = iqm_intervals(values, reps)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run in values:
        ax.plot(grid, run, color="grey", lw=0.6, alpha=0.5)
    ax.plot(grid, mean, color="C0", label="mean (bootstrap 95% CI)")
    ax.fill_between(grid, mean_low, mean_high, color="C0", alpha=0.2)
    ax.plot(grid, mid, color="C1", label=f"IQM ({how}, stratified bootstrap 95% CI)")
    ax.fill_between(grid, mid_low, mid_high, color="C1", alpha=0.2)
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"solved ({threshold:g})")
    label = (
        "greedy evaluation return"
        if metric == "eval_mean_return"
        else "training return (mean of last 100 episodes)"
    )
    ax.set(xlabel="env steps", ylabel=label, title=title)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {
        "metric": metric,
        "steps": grid.tolist(),
        "mean": mean.tolist(),
        "mean_ci": [mean_low.tolist(), mean_high.tolist()],
        "iqm": mid.tolist(),
        "iqm_ci": [mid_low.tolist(), mid_high.tolist()],
        "iqm_intervals": how,
    }


def summarize(rows: list[dict]) -> dict:
    """Solved count, and the median and worst case of env steps and final evaluation."""
    done = [r for r in rows if r.get("steps") is not None]
    steps = [r["steps"] for r in done]
    evals = [r["eval_mean_return"] for r in done if r["eval_mean_return"] is not None]
    return {
        "runs": len(rows),
        "finished": len(done),
        "solved": sum(bool(r["solved"]) for r in done),
        "median_steps": statistics.median(steps) if steps else None,
        "worst_steps": max(steps, default=None),
        "median_eval": statistics.median(evals) if evals else None,
        "worst_eval": min(evals, default=None),
    }


def results_table(rows: list[dict], stats: dict) -> str:
    """The markdown table of the runs, then the median and worst case."""
    lines = ["| seed | solved | env steps | final evaluation | seconds |", "|---|---|---|---|---|"]
    for r in rows:
        if r.get("steps") is None:
            lines.append(f"| {r['seed']} | no result | - | - | - |")
            continue
        evaluation = (
            "-"
            if r["eval_mean_return"] is None
            else f"{r['eval_mean_return']:.1f} +- {r['eval_std_return']:.1f}"
        )
        lines.append(
            f"| {r['seed']} | {'yes' if r['solved'] else 'no'} | {r['steps']:,} | "
            f"{evaluation} | {r['seconds']:.0f} |"
        )

    def fmt(key: str, spec: str) -> str:
        return "-" if stats[key] is None else format(stats[key], spec)

    lines += [
        "",
        f"solved {stats['solved']}/{stats['runs']}. Env steps (to the confirmed solve with "
        f"--stop-when-solved, else the whole budget): median {fmt('median_steps', ',.0f')}, worst "
        f"{fmt('worst_steps', ',')}. Final evaluation: median {fmt('median_eval', '.1f')}, "
        f"worst {fmt('worst_eval', '.1f')}.",
    ]
    return "\n".join(lines)


def write_report(out: Path, runs: list[tuple[int, Path]], reps: int = 1000) -> str:
    """``results.md``, ``results.json`` and ``curve.png`` in ``out`` for the runs
    ``[(seed, run directory)]``; returns the table."""
    rows, metrics, summaries = [], [], []
    for seed, run in runs:
        try:
            summary = json.loads((run / "summary.json").read_text())
        except (OSError, ValueError):
            rows.append({"seed": seed, "run": str(run)})
            continue
        summaries.append(summary)
        rows.append(
            {
                "seed": seed,
                "run": str(run),
                **{
                    k: summary.get(k)
                    for k in (
                        "solved",
                        "steps",
                        "eval_mean_return",
                        "eval_std_return",
                        "seconds",
                        "stop_reason",
                    )
                },
            }
        )
        metrics.append(read_metrics(run))
    stats = summarize(rows)
    table = results_table(rows, stats)
    result: dict = {"summary": stats, "runs": rows}
    # Compare like with like: the periodic evaluation only if every run has one.
    metric = (
        "eval_mean_return"
        if metrics and all(len(curve_of(m, "eval_mean_return")[0]) for m in metrics)
        else "mean_return"
    )
    curves = [c for c in (curve_of(m, metric) for m in metrics) if len(c[0])]
    if curves:
        grid, values = common_grid(curves)
        first = summaries[0]
        result["curve"] = plot_curve(
            out / "curve.png",
            grid,
            values,
            metric,
            f"{first['env']} ({first['algo']}), {len(values)} seeds",
            first.get("reward_threshold"),
            reps,
        )
    else:
        print("no run has a curve yet: no curve.png", file=sys.stderr)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    return table
