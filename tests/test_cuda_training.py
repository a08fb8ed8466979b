"""End to end on a GPU: a short ``--device cuda`` training run, and the benchmark on the GPU.

The CUDA ops themselves are tested with every other device in ``test_ops*.py``. Skipped
without a CUDA device.
"""

from __future__ import annotations

import json

from pylander import bench
from pylander.train import main as train_main

from conftest import needs_cuda

pytestmark = needs_cuda


def test_short_cuda_training_run(tmp_path):
    out = tmp_path / "cuda-run"
    code = train_main(
        [
            "--env",
            "CartPole-v1",
            "--device",
            "cuda",
            "--total-steps",
            "4096",
            "--num-envs",
            "8",
            "--num-steps",
            "64",
            "--epochs",
            "2",
            "--minibatches",
            "2",
            "--eval-episodes",
            "4",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4096 and summary["eval_episodes"] == 4
    assert summary["eval_mean_return"] is not None


def test_benchmark_runs_on_the_gpu():
    settings = bench.Settings(
        preset="tiny",
        repeats=2,
        sample_seconds=1e-5,
        warmup_calls=1,
        returns_sizes=[(8, 3)],
        batch_sizes=[5],
        trainer_updates=4,
        profile_updates=1,
        trainer_overrides={"num_envs": 2, "num_steps": 8},
    )
    settings.on_gpu()
    settings.returns_sizes, settings.batch_sizes = [(8, 3), (50, 1000)], [5, 2000]
    results = bench.run_benchmarks(settings, ("ops", "trainer", "profile"), log=lambda m: None)
    assert results["meta"]["device"] == "cuda" and results["meta"]["gpu"]
    assert results["trainer"]["config"]["device"] == "cuda"
    for op, size in (
        ("discounted_returns", "T50_N1000"),
        ("sample_categorical", "B2000_A4"),
        ("pg_loss", "B2000_A4"),
    ):
        assert results["ops"][op][size]["native_us"] > 0
    assert results["trainer"]["steps_per_s"] > 0
    assert results["profile"]["ms_per_update"]["update"] > 0
    assert "policy on cuda" in bench.format_report(results)
