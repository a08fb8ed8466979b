"""End-to-end training runs: CartPole to its threshold, and every output file of a run."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from pylander.checkpoint import load_checkpoint
from pylander.config import TrainConfig
from pylander.logger import WALL_CLOCK
from pylander.train import main as train_main

CARTPOLE = ["--env", "CartPole-v1", "--quiet"]  # the default algorithm and settings


def read_metrics(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_cartpole_reaches_its_threshold(tmp_path):
    out = tmp_path / "cartpole"
    assert train_main([*CARTPOLE, "--seed", "1", "--total-steps", "100000", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_greedy"] and summary["eval_episodes"] == 100
    assert summary["eval_mean_return"] >= 475.0, summary
    assert summary["solved"] is True


def test_lunarlander_run_writes_every_output(tmp_path):
    out = tmp_path / "ll"
    code = train_main(
        [
            "--seed",
            "2",
            "--total-steps",
            "3000",
            "--num-envs",
            "4",
            "--num-steps",
            "64",
            "--checkpoint-interval",
            "4",
            "--eval-episodes",
            "3",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    for name in [
        "config.toml",
        "metrics.csv",
        "checkpoint.pt",
        "best.pt",
        "learning_curve.png",
        "summary.json",
    ]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert list(out.glob("events.out.tfevents.*")), "no TensorBoard event file"

    config = TrainConfig.load(out / "config.toml")
    assert config.env_id == "LunarLander-v3" and config.seed == 2 and config.num_envs == 4

    rows = read_metrics(out / "metrics.csv")
    for column in [
        "update",
        "steps",
        "episodes",
        "seconds",
        "mean_return",
        "episode_length",
        "steps_per_second",
        "policy_loss",
        "value_loss",
        "entropy",
        "approx_kl",
        "explained_variance",
        "learning_rate",
        "minibatches",
        "grad_norm",
    ]:
        assert column in rows[0], column
    config = TrainConfig()
    most = config.epochs * config.minibatches  # Adam steps per update before the KL stop
    assert all(1 <= int(r["minibatches"]) <= most for r in rows)
    assert all(float(r["learning_rate"]) == config.learning_rate for r in rows)  # not annealed
    assert [int(r["update"]) for r in rows] == list(range(1, len(rows) + 1))
    assert int(rows[-1]["steps"]) == 3072 and len(rows) == 12

    summary = json.loads((out / "summary.json").read_text())
    for key in [
        "env",
        "algo",
        "seed",
        "steps",
        "episodes",
        "seconds",
        "steps_per_second",
        "eval_mean_return",
        "eval_std_return",
        "eval_episodes",
        "solved",
    ]:
        assert key in summary, key
    assert summary["steps"] == 3072 and summary["eval_episodes"] == 3 and summary["solved"] is False

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/policy_loss", "train/approx_kl", "train/mean_return"} <= set(scalars)
    assert [e.step for e in events.Scalars("train/policy_loss")][-1] == 3072  # at env steps
    assert events.Scalars("eval/mean_return")[0].value == pytest.approx(summary["eval_mean_return"])

    checkpoint = load_checkpoint(out / "checkpoint.pt", env_id="LunarLander-v3")
    assert checkpoint["trainer"]["counters"]["update"] == 12
    load_checkpoint(out / "best.pt", env_id="LunarLander-v3")

    # The saved config reproduces the run.
    again = tmp_path / "again"
    assert train_main(["--config", str(out / "config.toml"), "--out", str(again), "--quiet"]) == 0
    assert strip_seconds(read_metrics(again / "metrics.csv")) == strip_seconds(rows)


def strip_seconds(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def test_same_seed_gives_identical_metrics(tmp_path):
    runs = []
    for name in ["a", "b"]:
        out = tmp_path / name
        assert (
            train_main(
                [
                    *CARTPOLE,
                    "--seed",
                    "5",
                    "--total-steps",
                    "6000",
                    "--eval-episodes",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        runs.append(strip_seconds(read_metrics(out / "metrics.csv")))
    assert runs[0] == runs[1]
    other = tmp_path / "c"
    assert (
        train_main(
            [
                *CARTPOLE,
                "--seed",
                "6",
                "--total-steps",
                "6000",
                "--eval-episodes",
                "2",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert strip_seconds(read_metrics(other / "metrics.csv")) != runs[0]


def test_notebook_env_name_maps_to_v3(tmp_path, capsys):
    out = tmp_path / "v2"
    assert (
        train_main(
            [
                "--env",
                "LunarLander-v2",
                "--total-steps",
                "256",
                "--num-envs",
                "2",
                "--num-steps",
                "128",
                "--eval-episodes",
                "1",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert "LunarLander-v2 is not in gymnasium 1.x; using LunarLander-v3" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["env"] == "LunarLander-v3"


def test_mean_and_no_baseline_train(tmp_path):
    for baseline in ["mean", "none"]:
        out = tmp_path / baseline
        assert (
            train_main(
                [
                    *CARTPOLE,
                    "--baseline",
                    baseline,
                    "--total-steps",
                    "3000",
                    "--eval-episodes",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        rows = read_metrics(out / "metrics.csv")
        assert all(r["policy_loss"] not in ("nan", "") for r in rows[1:])
        assert "critic" not in "".join(
            load_checkpoint(out / "checkpoint.pt")["algorithm"]["policy"]
        )


def test_acrobot_trains(tmp_path):
    out = tmp_path / "acrobot"
    assert (
        train_main(
            [
                "--env",
                "Acrobot-v1",
                "--total-steps",
                "2048",
                "--num-envs",
                "4",
                "--eval-episodes",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads((out / "summary.json").read_text())["env"] == "Acrobot-v1"
    assert torch.isfinite(torch.tensor(float(read_metrics(out / "metrics.csv")[-1]["policy_loss"])))


def test_async_vector_env_gives_the_same_run_as_sync(tmp_path):
    runs = []
    for mode in ["sync", "async"]:
        out = tmp_path / mode
        assert (
            train_main(
                [
                    *CARTPOLE,
                    "--vector",
                    mode,
                    "--rollout-workers",
                    "0",
                    "--num-envs",
                    "2",
                    "--num-steps",
                    "64",
                    "--total-steps",
                    "1024",
                    "--eval-episodes",
                    "2",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        runs.append(strip_seconds(read_metrics(out / "metrics.csv")))
    assert len(runs[0]) == 8 and runs[0] == runs[1]


def test_clipped_update_reports_its_clip_fraction(tmp_path):
    fractions = {}
    for clip in ["0", "0.1"]:
        out = tmp_path / f"clip{clip}"
        assert (
            train_main(
                [
                    *CARTPOLE,
                    "--clip-coef",
                    clip,
                    "--target-kl",
                    "0",
                    "--epochs",
                    "8",
                    "--total-steps",
                    "4096",
                    "--eval-episodes",
                    "1",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        fractions[clip] = [float(r["clip_fraction"]) for r in read_metrics(out / "metrics.csv")]
    assert all(f == 0 for f in fractions["0"])  # off: no row is ever dropped
    assert all(0 < f < 1 for f in fractions["0.1"])  # eight passes push ratios out of range


def test_observation_normalisation_is_saved_and_applied_by_evaluation(tmp_path):
    from pylander.evaluate import policy_from_checkpoint

    out = tmp_path / "norm"
    assert (
        train_main(
            [
                *CARTPOLE,
                "--normalize-obs",
                "--total-steps",
                "2048",
                "--eval-episodes",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["architecture"]["normalize_obs"] is True
    policy, _ = policy_from_checkpoint(payload)
    stats = policy.normalizer
    assert stats.count.item() == 2048 and (stats.var != 1).all()  # statistics of real rollouts
    obs = torch.randn(5, 4)
    raw = policy.actor(obs)
    torch.testing.assert_close(policy(obs), policy.actor(stats(obs)))
    assert not torch.allclose(policy(obs), raw)
