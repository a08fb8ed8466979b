"""The benchmark's goals, and the printed report of a results document."""

from __future__ import annotations

from typing import Any

# Goals from the benchmark issue: (JSON path of the ratio, minimum).
TARGETS = {
    "discounted_returns[T=1000,N=64] vs best pure PyTorch": (
        "ops.discounted_returns.T1000_N64.speedup_vs_torch",
        3.0,
    ),
    "sample_categorical[B=64,A=4] vs Categorical": (
        "ops.sample_categorical.B64_A4.speedup_vs_categorical",
        2.0,
    ),
    "pg_loss fwd+bwd[B=1024,A=4] vs autograd": ("ops.pg_loss.B1024_A4.speedup_vs_autograd", 1.5),
    "trainer vs env-only stepping": ("trainer.ratio_to_env", 0.85),
    "trainer with rollout workers vs one-core env-only stepping": ("workers.ratio_to_env", 1.5),
    "trainer on envpool vs gymnasium env-only stepping": ("envpool.ratio_to_env", 2.0),
    "--algo notebook vs the notebook's own loop": ("seed_algo.ratio_to_notebook", 4.0),
}

# The baselines each op's table shows, in order.
OP_COLUMNS = {
    "discounted_returns": ["python", "torch"],
    "sample_categorical": ["categorical", "multinomial"],
    "pg_loss": ["autograd", "autograd_loss_only"],
    "policy_sample": ["torch"],
    "actor_critic_forward": ["torch", "composite"],
    "actor_critic_grads": ["autograd", "composite"],
}


def lookup(results: dict, path: str) -> Any:
    """The value at the dotted ``path`` of ``results``, or None where there is none."""
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_targets(results: dict) -> dict:
    """Each target whose ratio the results hold: its key, value, goal and whether it is met."""
    out = {}
    for name, (path, goal) in TARGETS.items():
        value = lookup(results, path)
        if value is not None:
            out[name] = {"key": path, "value": value, "goal": goal, "met": bool(value >= goal)}
    return out


def strip_private(value: Any) -> Any:
    """``value`` without the ``_``-prefixed keys (the report's text), for the JSON file."""
    if isinstance(value, dict):
        return {k: strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [strip_private(v) for v in value]
    return value


def _fmt_us(us: float) -> str:
    return f"{us:,.1f} us" if us < 10_000 else f"{us / 1e3:,.1f} ms"


def _meta_line(meta: dict) -> str:
    gpu = f"{meta['gpu']} | " if meta.get("gpu") else ""
    return (
        f"pylander {meta['pylander']} | torch {meta['torch']} | {meta['cpu']} | "
        f"{meta['cores']} cores | {gpu}ops on {meta.get('device', 'cpu')} | "
        f"torch threads {meta['torch_threads']} | load "
        f"{meta['load_before']} -> {meta.get('load_after', '?')} | "
        f"{meta['preset']} run, {meta.get('seconds', '?')} s"
    )


def _op_tables(op_results: dict) -> list[str]:
    lines = []
    for op, sizes in op_results.items():
        columns = OP_COLUMNS[op]
        header = f"{op:<20} {'size':<12} {'native':>11}"
        for b in columns:
            header += f" {b:>18} {'x':>7}"
        lines += ["", header]
        for size, entry in sizes.items():
            row = f"{'':<20} {size:<12} {_fmt_us(entry['native_us']):>11}"
            for b in columns:
                variant = entry.get(f"{b}_variant", "")
                label = _fmt_us(entry[f"{b}_us"])
                label += f" {variant.replace('torch_', '')[:3]}" if variant else ""
                row += f" {label:>18} {entry[f'speedup_vs_{b}']:>6.2f}x"
            lines.append(row)
    return lines


def _trainer_line(t: dict, e: dict) -> str:
    c = t["config"]
    return (
        f"trainer (default config, policy on {c['device']}: {c['num_envs']} {c['vector']} "
        f"envs x {c['num_steps']} steps, {c.get('epochs', 1)} epochs x "
        f"{c.get('minibatches', 1)} minibatches, {t.get('torch_threads', 1)} torch threads): "
        f"{t['steps_per_s']:,.0f} steps/s; "
        f"env only (random actions): {e['steps_per_s']:,.0f} steps/s; "
        f"ratio {t['ratio_to_env']:.3f}"
    )


def _distributed_line(d: dict) -> str:
    if d.get("ratio_2_to_1") is None:
        return f"distributed: FAILED: {d.get('error')}"
    return (
        f"distributed: 1 process {d['procs1_steps_per_s']:,.0f} steps/s; "
        f"2 processes {d['procs2_steps_per_s']:,.0f} steps/s; "
        f"ratio 2:1 {d['ratio_2_to_1']:.2f} ({d['cores']} cores)"
    )


def _profile_lines(p: dict) -> list[str]:
    parts = ", ".join(
        f"{k} {p['ms_per_update'][k]:.1f} ms ({100 * p['fractions'][k]:.0f}%)"
        for k in p["ms_per_update"]
    )
    return [
        "",
        f"profile of {p['algorithm']}.iterate (cProfile, mean of {p['updates']} updates): {parts}",
        "",
        "cProfile, top functions by own time:",
        p["_text"]["cprofile"].strip(),
        "",
        "torch.profiler, top ops by self CPU time:",
        p["_text"]["torch"].strip(),
    ]


def format_report(results: dict) -> str:
    """The results as the printed tables, one line per throughput comparison, and the targets."""
    meta = results.get("meta", {})
    lines = [_meta_line(meta)] if meta else []
    lines += _op_tables(results.get("ops", {}))
    if "vector_env" in results:
        v = results["vector_env"]
        lines += [
            "",
            f"env only: pylander's SerialVectorEnv {v['steps_per_s']['serial']:,.0f} steps/s, "
            f"gymnasium's SyncVectorEnv {v['steps_per_s']['gymnasium_sync']:,.0f} steps/s; "
            f"ratio {v['ratio_serial_to_sync']:.2f} (the env-only baselines below step "
            "SerialVectorEnv)",
        ]
    if "trainer" in results:
        lines += ["", _trainer_line(results["trainer"], results["env_only"])]
    for name, flags in [("workers", ""), ("collect_ahead", " --collect-ahead")]:
        if name in results:
            workers = results[name]["config"]["rollout_workers"]
            lines.append(
                f"--rollout-workers {workers}{flags} "
                + _trainer_line(results[name], results[f"{name}_env_only"])
                + " (env only measured before and after, not interleaved)"
            )
    if "envpool" in results:
        workers = results["envpool"]["config"]["rollout_workers"]
        lines.append(
            f"--env-backend envpool --rollout-workers {workers} "
            + _trainer_line(results["envpool"], results["envpool_env_only"])
        )
    if "seed_notebook" in results:
        n, a = results["seed_notebook"], results["seed_algo"]
        lines.append(
            f"notebook's own loop: {n['steps_per_s']:,.0f} steps/s; --algo notebook: "
            f"{a['steps_per_s']:,.0f} steps/s; ratio {a['ratio_to_notebook']:.2f}x"
        )
    if "distributed" in results:
        lines.append(_distributed_line(results["distributed"]))
    if "profile" in results:
        lines += _profile_lines(results["profile"])
    if meta.get("device", "cpu") != "cpu":
        lines += ["", "targets: set for the CPU, not checked on a GPU run"]
    targets = results.get("targets", {})
    if targets:
        lines += ["", "targets:"]
        for name, t in targets.items():
            lines.append(
                f"  [{'met' if t['met'] else 'MISSED'}] {name}: {t['value']:.2f} "
                f"(goal >= {t['goal']})"
            )
    return "\n".join(lines)
