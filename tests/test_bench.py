"""Smoke test of the benchmark machinery at tiny sizes: structure and sanity, never timings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pylander import bench, ops

TINY = dict(repeats=2, sample_seconds=1e-5, warmup_calls=1, returns_sizes=[(8, 3)],
            batch_sizes=[5], trainer_updates=4, seed_steps=400, profile_updates=1,
            trainer_overrides={"num_envs": 2, "num_steps": 8})


def tiny_settings(**changes) -> bench.Settings:
    return bench.Settings(**{**TINY, "preset": "tiny", **changes})


def assert_positive_ratio(value) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0, value


def test_baselines_compute_what_the_native_ops_do():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(300, 5, generator=g)
    dones = torch.rand(300, 5, generator=g) < 0.05
    want = ops.discounted_returns(rewards, dones, 0.99)
    for fn in (bench.returns_notebook_loop, bench.returns_torch_cumsum,
               bench.returns_torch_doubling):
        torch.testing.assert_close(fn(rewards, dones, 0.99), want, rtol=1e-4, atol=1e-4)
    logits = torch.randn(7, 4, generator=g).requires_grad_()
    actions = torch.randint(0, 4, (7,), generator=g)
    weights = torch.randn(7, generator=g)
    for entropy in (True, False):
        torch.testing.assert_close(bench.pg_native(logits, actions, weights, entropy),
                                   bench.pg_autograd(logits, actions, weights, entropy))


def test_interleaved_times_every_candidate_in_every_repeat():
    calls = []
    samples = bench.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                                repeats=3, sample_seconds=0.0, warmup_calls=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in samples.values() for t in v)
    assert bench.speedup([2.0, 4.0, 6.0, 100.0], [1.0, 1.0, 2.0, 1.0]) == 5.0 / 1.0


def test_interleaved_synchronises_before_every_clock_reading():
    events = []
    bench.interleaved({"a": lambda: events.append("call")}, repeats=2, sample_seconds=0.0,
                      warmup_calls=1, sync=lambda: events.append("sync"))
    # warm-up call, sync, timed call, sync (loop count), then one call + sync per repeat
    assert events == ["call", "sync", "call", "sync"] + ["call", "sync"] * 2


def test_gpu_settings_add_large_sizes_and_move_the_trainer():
    settings = bench.Settings.full()
    settings.on_gpu()
    assert settings.device == "cuda" and settings.trainer_overrides["device"] == "cuda"
    assert (1000, 65536) in settings.returns_sizes and (1000, 64) in settings.returns_sizes
    assert max(settings.batch_sizes) >= 65536 and 64 in settings.batch_sizes
    assert bench.Settings.full().device == "cpu"  # the defaults were not changed


def test_gpu_runs_report_no_cpu_targets(monkeypatch):
    entry = {"native_us": 1.0, "autograd_us": 1.0, "autograd_loss_only_us": 1.0,
             "speedup_vs_autograd": 1.0, "speedup_vs_autograd_loss_only": 1.0}
    monkeypatch.setattr(bench, "bench_ops", lambda settings, log: {"pg_loss": {"B1024_A4": entry}})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    results = bench.run_benchmarks(tiny_settings(device="cuda"), ("ops",), log=lambda m: None)
    assert results["targets"] == {} and results["meta"]["gpu"] == "Fake GPU"
    assert "not checked on a GPU run" in bench.format_report(results)
    cpu = bench.run_benchmarks(tiny_settings(), ("ops",), log=lambda m: None)
    assert cpu["targets"]["pg_loss fwd+bwd[B=1024,A=4] vs autograd"]["met"] is False


def test_cli_trainer_updates(monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(bench, "run_benchmarks", lambda settings, sections, log: seen.update(
        updates=settings.trainer_updates) or {})
    monkeypatch.setattr(bench, "format_report", lambda results: "")
    assert bench.main(["--only", "trainer", "--trainer-updates", "7"]) == 0
    assert seen["updates"] == 7
    with pytest.raises(SystemExit):
        bench.main(["--only", "trainer", "--trainer-updates", "2"])
    assert "at least 3" in capsys.readouterr().err


def test_cli_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda", "--only", "ops"])
    assert exit_info.value.code == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


def test_ops_and_trainer_sections_give_the_documented_keys(tmp_path):
    results = bench.run_benchmarks(tiny_settings(), ("ops", "trainer", "seed"), log=lambda m: None)
    expected = {"discounted_returns": ("T8_N3", ["python", "torch"]),
                "sample_categorical": ("B5_A4", ["categorical", "multinomial"]),
                "pg_loss": ("B5_A4", ["autograd", "autograd_loss_only"])}
    for op, (size, baselines) in expected.items():
        entry = results["ops"][op][size]
        assert entry["native_us"] > 0
        for baseline in baselines:
            assert_positive_ratio(entry[f"speedup_vs_{baseline}"])
    assert results["ops"]["discounted_returns"]["T8_N3"]["torch_variant"] in (
        "torch_cumsum", "torch_doubling")
    for key in ("trainer.steps_per_s", "env_only.steps_per_s", "trainer.ratio_to_env",
                "seed_notebook.steps_per_s", "seed_algo.steps_per_s"):
        assert_positive_ratio(bench.lookup(results, key))
    target = results["targets"]["trainer vs env-only stepping"]
    assert target["goal"] == 0.85 and target["met"] == (target["value"] >= 0.85)
    # Sizes the tiny run skipped have no target entry rather than a made-up one.
    assert not any(name.startswith("pg_loss") for name in results["targets"])
    report = bench.format_report(results)
    assert "discounted_returns" in report and "trainer (default config, policy on cpu:" in report
    json.dumps(results)  # plain data throughout


def test_profile_section_accounts_for_the_update(tmp_path):
    results = bench.run_benchmarks(tiny_settings(), ("profile",), log=lambda m: None)
    profile = results["profile"]
    assert set(profile["fractions"]) == {"env_step", "policy_act", "rollout_glue", "update"}
    assert math.isclose(sum(profile["fractions"].values()), 1.0, rel_tol=1e-9)
    assert profile["cprofile_top"] and profile["torch_profiler_top"]
    assert "profile of Reinforce.iterate" in bench.format_report(results)


def test_distributed_section_reports_rates_or_the_failure(tmp_path, monkeypatch):
    rates = {1: 100.0, 2: 150.0}
    monkeypatch.setattr(bench, "_train_subprocess", lambda procs, *a: rates[procs])
    result = bench.bench_distributed(tiny_settings(dist_rounds=2), tmp_path, log=lambda m: None)
    assert result["distributed"]["ratio_2_to_1"] == 1.5
    assert result["distributed"]["procs1_steps_per_s"] == 100.0

    def broken(procs, *a):
        raise RuntimeError("`-m pylander.train --procs 2` exited with 1:\nboom")

    monkeypatch.setattr(bench, "_train_subprocess", broken)
    result = bench.bench_distributed(tiny_settings(), tmp_path, log=lambda m: None)
    assert result["distributed"]["ratio_2_to_1"] is None and "boom" in result["distributed"]["error"]
    assert "FAILED" in bench.format_report(result)


def test_metrics_rate_skips_the_start(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = ["update,steps,episodes,seconds,mean_return,loss,entropy"]
    rows += [f"{u},{u * 100},0,{5.0 + u if u > 1 else 0.01},nan,0,0" for u in range(1, 11)]
    path.write_text("\n".join(rows) + "\n")
    assert bench.metrics_rate(path) == pytest.approx(100.0)  # the slow first update is left out
    path.write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(ValueError, match="rows"):
        bench.metrics_rate(path)


def test_cli_writes_the_json_it_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.Settings, "quick", classmethod(lambda cls: tiny_settings()))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "ops", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["preset"] == "tiny" and data["meta"]["torch_threads"] == 1
    assert_positive_ratio(data["ops"]["pg_loss"]["B5_A4"]["speedup_vs_autograd"])
    printed = capsys.readouterr().out
    assert "pg_loss" in printed and str(out) in printed
