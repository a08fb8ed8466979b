"""Smoke test of the benchmark machinery at tiny sizes: structure and sanity, never timings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pylander import bench, ops
from pylander.bench import distributed, report, runner, timing
from pylander.bench import ops as op_bench
from pylander.bench.trainer import Interleave

TINY = dict(
    repeats=2,
    sample_seconds=1e-5,
    warmup_calls=1,
    returns_sizes=[(8, 3)],
    batch_sizes=[5],
    trainer_updates=4,
    notebook_steps=400,
    profile_updates=1,
    trainer_overrides={"num_envs": 2, "num_steps": 8, "epochs": 1, "minibatches": 2},
)


def tiny_settings(**changes) -> bench.Settings:
    return bench.Settings(**{**TINY, "preset": "tiny", **changes})


def assert_positive_ratio(value) -> None:
    assert isinstance(value, float) and math.isfinite(value) and value > 0, value


def test_baselines_compute_what_the_native_ops_do():
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(300, 5, generator=g)
    dones = torch.rand(300, 5, generator=g) < 0.05
    want = ops.discounted_returns(rewards, dones, 0.99)
    for fn in (
        op_bench.returns_notebook_loop,
        op_bench.returns_torch_cumsum,
        op_bench.returns_torch_doubling,
    ):
        torch.testing.assert_close(fn(rewards, dones, 0.99), want, rtol=1e-4, atol=1e-4)
    logits = torch.randn(7, 4, generator=g).requires_grad_()
    actions = torch.randint(0, 4, (7,), generator=g)
    weights = torch.randn(7, generator=g)
    for entropy in (True, False):
        torch.testing.assert_close(
            op_bench.pg_native(logits, actions, weights, entropy),
            op_bench.pg_autograd(logits, actions, weights, entropy),
        )


def test_interleaved_rounds_take_turns_starting_at_each_candidate():
    calls = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    samples = timing.interleaved(candidates, repeats=3, sample_seconds=0.0, warmup_calls=2)
    assert all(len(v) >= 3 and all(t > 0 for t in v) for v in samples.values())
    runs = [name for i, name in enumerate(calls) if i == 0 or calls[i - 1] != name]
    # warm-up, then one turn each per round, the round starting one candidate later each time
    assert runs == list("abcabcbcacab")
    assert timing.speedup([2.0, 4.0, 6.0, 100.0], [1.0, 1.0, 2.0, 1.0]) == 5.0 / 1.0


def test_interleaved_times_with_the_threads_torch_uses():
    threads = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(2)
        timing.interleaved(
            {"a": lambda: seen.append(torch.get_num_threads())},
            repeats=1,
            sample_seconds=0.0,
            warmup_calls=0,
        )
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {2}  # torch's Timer alone would time with one thread


def test_targets_are_met_at_their_goal_and_missed_just_below():
    results = {
        "ops": {
            "discounted_returns": {"T1000_N64": {"speedup_vs_torch": 3.01}},
            "sample_categorical": {"B64_A4": {"speedup_vs_categorical": 1.99}},
            "pg_loss": {"B1024_A4": {"speedup_vs_autograd": 1.5}},
        },
        "trainer": {"ratio_to_env": 0.849},
    }
    verdicts = {name: (t["value"], t["met"]) for name, t in report.check_targets(results).items()}
    assert verdicts == {
        "discounted_returns[T=1000,N=64] vs best pure PyTorch": (3.01, True),
        "sample_categorical[B=64,A=4] vs Categorical": (1.99, False),
        "pg_loss fwd+bwd[B=1024,A=4] vs autograd": (1.5, True),
        "trainer vs env-only stepping": (0.849, False),
    }
    del results["trainer"]  # a section that did not run has no verdict, not a made-up one
    assert "trainer vs env-only stepping" not in report.check_targets(results)
    results["trainer"] = {"ratio_to_env": 0.86}
    assert report.check_targets(results)["trainer vs env-only stepping"]["met"] is True


def test_section_names_accept_the_old_seed_name():
    assert runner.section_names(["profile", "seed", "ops", "notebook"]) == (
        "ops",
        "notebook",
        "profile",
    )
    with pytest.raises(ValueError, match="unknown section 'nope'"):
        runner.section_names(["nope"])


def test_gpu_settings_add_large_sizes_and_move_the_trainer():
    settings = bench.Settings.full()
    settings.on_gpu()
    assert settings.device == "cuda" and settings.trainer_overrides["device"] == "cuda"
    assert (1000, 65536) in settings.returns_sizes and (1000, 64) in settings.returns_sizes
    assert max(settings.batch_sizes) >= 65536 and 64 in settings.batch_sizes
    assert bench.Settings.full().device == "cpu"  # the defaults were not changed


def test_gpu_runs_report_no_cpu_targets(monkeypatch):
    entry = {
        "native_us": 1.0,
        "autograd_us": 1.0,
        "autograd_loss_only_us": 1.0,
        "speedup_vs_autograd": 1.0,
        "speedup_vs_autograd_loss_only": 1.0,
    }
    fake_ops = runner.Section("ops ...", lambda *a: {"ops": {"pg_loss": {"B1024_A4": entry}}})
    monkeypatch.setitem(runner.SECTIONS, "ops", fake_ops)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    results = bench.run_benchmarks(tiny_settings(device="cuda"), ("ops",), log=lambda m: None)
    assert results["targets"] == {} and results["meta"]["gpu"] == "Fake GPU"
    assert "not checked on a GPU run" in bench.format_report(results)
    cpu = bench.run_benchmarks(tiny_settings(), ("ops",), log=lambda m: None)
    assert cpu["targets"]["pg_loss fwd+bwd[B=1024,A=4] vs autograd"]["met"] is False


def test_cli_options_reach_the_settings(monkeypatch, capsys):
    seen = {}

    def fake_run(settings, sections, log):
        seen.update(updates=settings.trainer_updates, sections=sections)
        return {}

    monkeypatch.setattr(runner, "run_benchmarks", fake_run)
    monkeypatch.setattr(runner, "format_report", lambda results: "")
    assert bench.main(["--only", "seed", "trainer", "--trainer-updates", "7", "--profile"]) == 0
    assert seen == {"updates": 7, "sections": ("trainer", "notebook", "profile")}
    with pytest.raises(SystemExit):
        bench.main(["--only", "trainer", "--trainer-updates", "2"])
    assert "at least 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--threads", "0"])
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_cli_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cuda", "--only", "ops"])
    assert exit_info.value.code == 2
    assert "--device cuda: torch sees no CUDA device" in capsys.readouterr().err


class FakeRun:
    class config:
        total_steps = 30


class FakeInfo:
    def __init__(self, steps):
        self.steps, self.run = steps, FakeRun


def test_interleave_hook_pairs_each_baseline_block_with_the_next_update():
    hook = Interleave(baseline=lambda: 5)
    for steps in (10, 20, 30):  # the last update (30 of 30 steps) runs no block
        hook.on_update(FakeInfo(steps))
    assert [(t.baseline_steps, t.trainer_steps) for t in hook.turns] == [(5, 10), (5, 10)]
    assert all(t.baseline_s >= 0 and t.trainer_s >= 0 for t in hook.turns)


def test_ops_trainer_and_notebook_sections_give_the_documented_keys():
    results = bench.run_benchmarks(
        tiny_settings(), ("ops", "vector_env", "trainer", "workers", "notebook"), log=lambda m: None
    )
    expected = {
        "discounted_returns": ("T8_N3", ["python", "torch"]),
        "sample_categorical": ("B5_A4", ["categorical", "multinomial"]),
        "pg_loss": ("B5_A4", ["autograd", "autograd_loss_only"]),
        "policy_sample": ("B16", ["torch"]),  # the trainer's sizes, whatever the preset
        "actor_critic_grads": ("B256", ["autograd"]),
    }
    for op, (size, baselines) in expected.items():
        entry = results["ops"][op][size]
        assert entry["native_us"] > 0
        for baseline in baselines:
            assert_positive_ratio(entry[f"speedup_vs_{baseline}"])
    assert results["ops"]["discounted_returns"]["T8_N3"]["torch_variant"] in (
        "torch_cumsum",
        "torch_doubling",
    )
    for key in (
        "trainer.steps_per_s",
        "env_only.steps_per_s",
        "trainer.ratio_to_env",
        "workers.steps_per_s",
        "workers.ratio_to_env",
        "workers_env_only.steps_per_s",
        "collect_ahead.ratio_to_env",
        "seed_notebook.steps_per_s",
        "seed_algo.steps_per_s",
        "seed_algo.ratio_to_notebook",
        "vector_env.steps_per_s.serial",
        "vector_env.steps_per_s.gymnasium_sync",
        "vector_env.ratio_serial_to_sync",
    ):
        assert_positive_ratio(bench.lookup(results, key))
    # 4 updates: 3 baseline blocks each followed by an update, the first left out as warm-up
    assert results["trainer"]["updates"] == 2
    assert (
        results["targets"]["trainer vs env-only stepping"]["value"]
        == (results["trainer"]["ratio_to_env"])
    )
    # Sizes the tiny run skipped have no target entry rather than a made-up one.
    assert not any(name.startswith("pg_loss") for name in results["targets"])
    text = bench.format_report(results)
    assert "discounted_returns" in text and "trainer (default config, policy on cpu:" in text
    assert "--algo notebook:" in text
    assert "env only: pylander's SerialVectorEnv" in text
    assert results["trainer"]["config"]["rollout_workers"] == 0
    assert results["workers"]["config"]["rollout_workers"] == 2
    assert results["collect_ahead"]["config"]["collect_ahead"] is True
    assert "--rollout-workers 2 trainer (default config, policy on cpu: 2 sync envs" in text
    assert "--rollout-workers 2 --collect-ahead trainer" in text
    assert len(results["workers"]["env_only_before_after"]) == 2
    json.dumps(results)  # plain data throughout


def test_profile_section_accounts_for_the_update():
    results = bench.run_benchmarks(tiny_settings(), ("profile",), log=lambda m: None)
    profile = results["profile"]
    assert set(profile["fractions"]) == {"env_step", "policy_act", "rollout_glue", "update"}
    assert all(v > 0 for v in profile["ms_per_update"].values()), profile["ms_per_update"]
    assert math.isclose(sum(profile["fractions"].values()), 1.0, rel_tol=1e-9)
    assert profile["cprofile_top"] and profile["torch_profiler_top"]
    assert "profile of Reinforce.iterate" in bench.format_report(results)


def test_distributed_section_reports_rates_or_the_failure(tmp_path, monkeypatch):
    rates = {1: 100.0, 2: 150.0}
    monkeypatch.setattr(distributed, "train_subprocess", lambda procs, *a: rates[procs])
    result = distributed.bench_distributed(
        tiny_settings(dist_rounds=2), tmp_path, log=lambda m: None
    )
    assert result["distributed"]["ratio_2_to_1"] == 1.5
    assert result["distributed"]["procs1_steps_per_s"] == 100.0

    def broken(procs, *a):
        raise RuntimeError("`-m pylander.train --procs 2` exited with 1:\nboom")

    monkeypatch.setattr(distributed, "train_subprocess", broken)
    failed = distributed.bench_distributed(tiny_settings(), tmp_path, log=lambda m: None)
    assert failed["distributed"]["ratio_2_to_1"] is None
    assert "boom" in failed["distributed"]["error"]
    assert "FAILED" in bench.format_report(failed)


def test_metrics_rate_skips_the_start(tmp_path):
    path = tmp_path / "metrics.csv"
    rows = ["update,steps,episodes,seconds,mean_return,loss,entropy"]
    rows += [f"{u},{u * 100},0,{5.0 + u if u > 1 else 0.01},nan,0,0" for u in range(1, 11)]
    path.write_text("\n".join(rows) + "\n")
    assert distributed.metrics_rate(path) == pytest.approx(100.0)  # the slow first update is out
    path.write_text("\n".join(rows[:3]) + "\n")
    with pytest.raises(ValueError, match="rows"):
        distributed.metrics_rate(path)


def test_cli_writes_the_json_it_prints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.Settings, "quick", classmethod(lambda cls: tiny_settings()))
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "ops", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["preset"] == "tiny" and data["meta"]["torch_threads"] == 1
    assert_positive_ratio(data["ops"]["pg_loss"]["B5_A4"]["speedup_vs_autograd"])
    printed = capsys.readouterr().out
    assert "pg_loss" in printed and str(out) in printed


def test_envpool_section_compares_with_gymnasium_env_only_stepping():
    pytest.importorskip("envpool")
    results = bench.run_benchmarks(tiny_settings(), ("envpool",), log=lambda m: None)
    trainer, env_only = results["envpool"], results["envpool_env_only"]
    assert trainer["config"]["env_backend"] == "envpool" and env_only["backend"] == "gymnasium"
    assert trainer["ratio_to_env"] == pytest.approx(
        trainer["steps_per_s"] / env_only["steps_per_s"]
    )
    assert "trainer on envpool vs gymnasium env-only stepping" in results["targets"]
    assert "--env-backend envpool --rollout-workers 2 trainer" in bench.format_report(results)
