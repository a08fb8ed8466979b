"""Training hooks: user callbacks, free-form metrics, periodic evaluation and best.pt."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from pylander.checkpoint import load_checkpoint
from pylander.config import TrainConfig
from pylander.hooks import Callback, UpdateInfo
from pylander.logger import MetricsCSV
from pylander.trainer import train


def tiny(tmp_path, name="run", **overrides) -> TrainConfig:
    settings = dict(
        env_id="CartPole-v1",
        num_envs=4,
        num_steps=32,
        total_steps=1280,
        eval_episodes=3,
        eval_interval=0,
        out=str(tmp_path / name),
        quiet=True,
    )
    return TrainConfig(**{**settings, **overrides})


def read_rows(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_callable_sees_every_update_and_can_stop_training(tmp_path):
    seen: list[UpdateInfo] = []

    def stop_at_three(info: UpdateInfo):
        seen.append(info)
        return False if info.update == 3 else None

    summary = train(tiny(tmp_path), callbacks=[stop_at_three])
    assert [i.update for i in seen] == [1, 2, 3]
    assert seen[-1].steps == 3 * 128 and "policy_loss" in seen[-1].metrics
    assert summary["stop_reason"] == "callback" and summary["updates"] == 3
    assert len(read_rows(tmp_path / "run" / "metrics.csv")) == 3  # the stopping update is logged


def test_a_callback_records_its_own_metric_and_names_its_stop_reason(tmp_path):
    class Recorder(Callback):
        stop_reason = "enough"

        def __init__(self):
            self.calls = []

        def on_start(self, run):
            self.calls.append("start")

        def on_update(self, info):
            if info.update >= 2:  # a column that appears only from the second row on
                info.record("twice_update", 2.0 * info.update)
            return info.update < 4

        def on_end(self, run):
            self.calls.append(run.summary["stop_reason"])

        def close(self):
            self.calls.append("close")

    hook = Recorder()
    summary = train(tiny(tmp_path), callbacks=[hook])
    assert summary["stop_reason"] == "enough" and hook.calls == ["start", "enough", "close"]
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert [r["twice_update"] for r in rows] == ["", "4", "6", "8"]


def test_a_bad_callback_is_refused():
    with pytest.raises(TypeError, match="on_update"):
        train(TrainConfig(), callbacks=[42])


def test_metrics_csv_widens_its_header_and_keeps_columns_on_resume(tmp_path):
    path = tmp_path / "metrics.csv"
    log = MetricsCSV(path)
    log.write({"update": 1, "a": 1.5})
    log.write({"update": 2, "a": 2.5, "b": 7})
    log.write({"update": 3, "b": 8})
    log.close()
    assert read_rows(path) == [
        {"update": "1", "a": "1.5", "b": ""},
        {"update": "2", "a": "2.5", "b": "7"},
        {"update": "3", "a": "", "b": "8"},
    ]
    resumed = MetricsCSV(path, resume_update=2)  # rows after the checkpoint are redone
    resumed.write({"update": 3, "a": 9.0})
    resumed.close()
    rows = read_rows(path)
    assert list(rows[0]) == ["update", "a", "b"] and [r["update"] for r in rows] == ["1", "2", "3"]
    assert rows[-1] == {"update": "3", "a": "9", "b": ""}


def test_periodic_evaluation_chooses_best_pt_and_the_result_is_scored_fresh(tmp_path):
    config = tiny(tmp_path, total_steps=4096, eval_interval=1024, eval_interval_episodes=4)
    evals: list[tuple[int, float]] = []
    best_seen: list[dict] = []

    def watch(info: UpdateInfo):
        if "eval_mean_return" in info.metrics:
            value = info.metrics["eval_mean_return"]
            if all(value > v for _, v in evals):  # a tie keeps the earlier policy
                best_seen.append(
                    {k: v.clone() for k, v in info.run.algorithm.policy.state_dict().items()}
                )
            evals.append((info.steps, value))

    summary = train(config, callbacks=[watch])
    assert [s for s, _ in evals] == [1024, 2048, 3072, 4096]
    assert summary["best_periodic_eval"] == max(v for _, v in evals)
    best = load_checkpoint(tmp_path / "run" / "best.pt")["algorithm"]["policy"]
    for key, value in best_seen[-1].items():
        torch.testing.assert_close(best[key], value, rtol=0, atol=0)
    # The result is the best policy on the final evaluation's own episodes, and the final
    # policy is reported beside it.
    assert summary["eval_episodes"] == 3 and summary["last_eval_mean_return"] is not None
    rows = read_rows(tmp_path / "run" / "metrics.csv")
    assert [r["eval_mean_return"] != "" for r in rows] == [(i + 1) % 8 == 0 for i in range(32)]
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["eval_mean_return"] == summary["eval_mean_return"]


def test_stop_when_solved_stops_on_the_periodic_evaluation(tmp_path, monkeypatch):
    import pylander.run as run  # where a run finds its reward threshold

    monkeypatch.setattr(run, "reward_threshold", lambda env_id: 0.0)  # any policy solves it
    config = tiny(
        tmp_path,
        total_steps=100_000,
        eval_interval=512,
        eval_interval_episodes=2,
        stop_when_solved=True,
    )
    summary = train(config)
    assert summary["stop_reason"] == "solved" and summary["steps"] == 512
    assert summary["solved"] and summary["eval_episodes"] == 3
