"""CUDA kernels (csrc/cuda/*.cu): opcheck, parity with the CPU kernels, sampling, errors.

Every test here needs a CUDA device and is skipped without one.
"""

from __future__ import annotations

import re

import pytest
import torch

import pylander
from pylander import ops

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device: the CUDA kernels need a GPU"
)

_ops = torch.ops.pylander
DTYPES = [torch.float32, torch.float64]
# The scans round exactly like the CPU kernels (no FMA contraction); the rest differ by the
# device's exp/log and the order of the final sums, so compare with a small tolerance.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


@pytest.fixture
def dev() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device())


def _rollout(T, N, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=dtype)
    values = torch.randn(T, N, generator=g, dtype=dtype)
    dones = torch.rand(T, N, generator=g) < 0.1
    last = torch.randn(N, generator=g, dtype=dtype)
    return [x.to(device) for x in (rewards, values, dones, last)]


def _batch(B, A, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, A, generator=g, dtype=dtype)
    actions = torch.randint(0, A, (B,), generator=g)
    weights = torch.randn(B, generator=g, dtype=dtype)
    return [x.to(device) for x in (logits, actions, weights)]


def _scalar(value, dtype, device):
    return torch.tensor(value, dtype=dtype, device=device)


def _cpu(xs):
    return [x.cpu() if isinstance(x, torch.Tensor) else x for x in xs]


def test_built_with_cuda_kernels():
    assert pylander.CUDA_KERNELS, "pylander was built without its CUDA kernels"


# --- opcheck ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bootstrap", [False, True])
def test_opcheck_discounted_returns(dev, dtype, with_bootstrap):
    rewards, _, dones, last = _rollout(6, 5, dtype, dev)
    bootstrap = last.requires_grad_() if with_bootstrap else None
    args = (rewards.requires_grad_(), dones, 0.9, bootstrap)
    torch.library.opcheck(_ops.discounted_returns, args)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_gae(dev, dtype):
    rewards, values, dones, last = _rollout(6, 5, dtype, dev)
    args = (
        rewards.requires_grad_(), values.requires_grad_(), dones, last.requires_grad_(), 0.99, 0.95
    )
    torch.library.opcheck(_ops.gae, args)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_opcheck_pg_loss(dev, dtype, reduction):
    logits, actions, weights = _batch(7, 4, dtype, dev)
    torch.library.opcheck(
        _ops.pg_loss, (logits.requires_grad_(), actions, weights.requires_grad_(), reduction)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_pg_loss_backward(dev, dtype):
    logits, actions, weights = _batch(7, 4, dtype, dev)
    grads = (_scalar(1.3, dtype, dev), _scalar(-0.2, dtype, dev))
    torch.library.opcheck(_ops.pg_loss_backward, (*grads, logits, actions, weights, "mean"))


def _dominant_logits(B, A, dtype, device):
    """Each row has one logit 0 and the rest -300, so every draw is that category."""
    logits = torch.full((B, A), -300.0, dtype=dtype, device=device)
    logits[torch.arange(B, device=device), torch.arange(B, device=device) % A] = 0.0
    return logits


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_sample_categorical(dev, dtype):
    logits = _dominant_logits(9, 4, dtype, dev)
    torch.library.opcheck(_ops.sample_categorical, (logits, None))
    # The AOT test cannot take grads through an op whose first output is a long tensor.
    torch.library.opcheck(
        _ops.sample_categorical,
        (logits.clone().requires_grad_(), None),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor"),
    )
    actions, log_probs = ops.sample_categorical(logits)
    torch.testing.assert_close(actions, torch.arange(9, device=dev) % 4)
    torch.testing.assert_close(log_probs, torch.zeros(9, dtype=dtype, device=dev))


def test_generator_without_device_index_draws_on_the_current_device(dev):
    # torch.Generator(device="cuda") reports device "cuda", with no index; the trainer makes one.
    logits = torch.randn(64, 3, device=dev)
    first, _ = ops.sample_categorical(logits, torch.Generator(device="cuda").manual_seed(1))
    again, _ = ops.sample_categorical(logits, torch.Generator(device="cuda").manual_seed(1))
    assert torch.equal(first, again)


# --- parity with the CPU kernels --------------------------------------------------------------

SCAN_SHAPES = [(1, 1), (7, 3), (64, 129), (1000, 2), (3, 1000), (0, 5), (5, 0), (0, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SCAN_SHAPES)
@pytest.mark.parametrize("with_bootstrap", [False, True])
def test_discounted_returns_matches_cpu(dev, dtype, shape, with_bootstrap):
    rewards, _, dones, last = _rollout(*shape, dtype, dev)
    bootstrap = last if with_bootstrap else None
    out = ops.discounted_returns(rewards, dones, 0.97, bootstrap)
    ref = ops.discounted_returns(*_cpu([rewards, dones, 0.97, bootstrap]))
    assert out.device == dev and out.dtype == dtype and out.shape == rewards.shape
    torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SCAN_SHAPES)
def test_gae_matches_cpu(dev, dtype, shape):
    args = [*_rollout(*shape, dtype, dev), 0.99, 0.95]
    out = ops.gae(*args)
    ref = ops.gae(*_cpu(args))
    assert out.device == dev and out.dtype == dtype and out.shape == args[0].shape
    torch.testing.assert_close(out.cpu(), ref, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_scans_non_contiguous_and_edge_discounts(dev, dtype):
    rewards, values, dones, last = _rollout(40, 24, dtype, dev)
    r, v, d = rewards[::2, ::3], values[::2, ::3], dones[::2, ::3]  # non-contiguous views
    for gamma, lam in [(0.0, 0.0), (1.0, 1.0), (0.5, 0.0)]:
        torch.testing.assert_close(
            ops.discounted_returns(r, d, gamma, last[::3]).cpu(),
            ops.discounted_returns(*_cpu([r, d, gamma, last[::3]])),
            **TOL[dtype],
        )
        torch.testing.assert_close(
            ops.gae(r, v, d, last[::3], gamma, lam).cpu(),
            ops.gae(*_cpu([r, v, d, last[::3], gamma, lam])),
            **TOL[dtype],
        )


PG_SHAPES = [(1, 1), (5, 4), (257, 7), (1000, 18), (3, 1000), (0, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PG_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pg_loss_forward_backward_matches_cpu(dev, dtype, shape, reduction):
    logits, actions, weights = _batch(*shape, dtype, dev)
    results = []
    for device in (dev, torch.device("cpu")):
        z = logits.detach().to(device).requires_grad_()  # a leaf on each device
        w = weights.detach().to(device).requires_grad_()
        loss, entropy = ops.pg_loss(z, actions.to(device), w, reduction)
        assert loss.shape == () and loss.dtype == dtype and loss.device == device
        (loss - 0.01 * entropy).backward()
        results.append([t.detach().cpu() for t in (loss, entropy, z.grad, w.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PG_SHAPES)
def test_pg_loss_backward_matches_cpu(dev, dtype, shape):
    logits, actions, weights = _batch(*shape, dtype, dev, seed=3)
    for reduction in ("mean", "sum"):
        grads = [_scalar(0.7, dtype, dev), _scalar(-1.9, dtype, dev)]
        args = [*grads, logits, actions, weights, reduction]
        out = _ops.pg_loss_backward(*args)
        assert out.device == dev and out.shape == logits.shape
        torch.testing.assert_close(out.cpu(), _ops.pg_loss_backward(*_cpu(args)), **TOL[dtype])
        # 0-dim CPU gradients are accepted too (torch lets CPU scalars mix with CUDA tensors).
        out_cpu_grads = _ops.pg_loss_backward(*_cpu(grads), logits, actions, weights, reduction)
        torch.testing.assert_close(out_cpu_grads, out)


def test_kernels_use_the_current_stream(dev):
    rewards, values, dones, last = _rollout(50, 33, torch.float32, dev)
    logits, actions, weights = _batch(300, 5, torch.float32, dev)

    def run():
        advantages = ops.gae(rewards, values, dones, last, 0.9, 0.8)
        return advantages, ops.pg_loss(logits, actions, weights)

    expected = run()
    stream = torch.cuda.Stream(device=dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        got = run()
    torch.cuda.current_stream(dev).wait_stream(stream)
    torch.testing.assert_close(got, expected)


# --- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_seeded_generator_reproduces(dev, dtype):
    logits = _batch(4096, 7, dtype, dev)[0]
    draws = []
    for seed in (123, 123, 124):
        g = torch.Generator(device=dev).manual_seed(seed)
        draws.append(ops.sample_categorical(logits, g))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])
    actions, log_probs = draws[0]
    assert actions.dtype == torch.long and actions.device == dev and log_probs.dtype == dtype
    assert actions.min() >= 0 and actions.max() < 7
    ref = torch.log_softmax(logits.double(), -1).gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(log_probs, ref.to(dtype), **TOL[dtype])

    # The default CUDA generator, seeded through torch, reproduces too.
    torch.cuda.manual_seed(7)
    first = ops.sample_categorical(logits)
    torch.cuda.manual_seed(7)
    assert torch.equal(first[0], ops.sample_categorical(logits)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_is_inverse_cdf_of_torch_uniforms(dev, dtype):
    """The kernel draws one float64 uniform per row with at::rand on the generator."""
    logits = _batch(4096, 7, dtype, dev, seed=5)[0]
    actions, _ = ops.sample_categorical(logits, torch.Generator(device=dev).manual_seed(9))
    gen = torch.Generator(device=dev).manual_seed(9)
    u = torch.rand(4096, generator=gen, dtype=torch.float64, device=dev)
    z = logits.double().cpu()
    p = torch.exp(z - z.max(1, keepdim=True).values)
    hit = (p.cumsum(1) > (u.cpu() * p.sum(1))[:, None]) & (p > 0)
    expected = torch.where(hit.any(1), hit.int().argmax(1), p.shape[1] - 1)
    assert (actions.cpu() != expected).sum() <= 1  # a tie at a boundary is vanishingly rare


@pytest.mark.parametrize("dtype", DTYPES)
def test_sample_categorical_distribution_chi_square(dev, dtype):
    # The last category has probability exactly 0 in double and must never be drawn.
    row = torch.tensor([1.0, 0.0, -1.0, 2.0, -1000.0], dtype=dtype)
    n = 200_000
    logits = row.to(dev).expand(n, -1).contiguous()
    gen = torch.Generator(device=dev).manual_seed(2024)
    actions, log_probs = ops.sample_categorical(logits, gen)
    counts = torch.bincount(actions.cpu(), minlength=5).double()
    assert counts[4] == 0
    probs = torch.softmax(row.double()[:4], 0)
    expected = n * probs
    chi2 = ((counts[:4] - expected) ** 2 / expected).sum()
    df = torch.tensor(3 / 2, dtype=torch.float64)
    p_value = torch.special.gammaincc(df, chi2 / 2).item()  # survival function of chi2(3)
    assert p_value > 1e-6, f"chi2={chi2.item():.2f}, p={p_value:.2e}, counts={counts.tolist()}"
    torch.testing.assert_close(
        log_probs.cpu(), torch.log(probs)[actions.cpu()].to(dtype), **TOL[dtype]
    )


def test_sample_categorical_empty_batch(dev):
    actions, log_probs = ops.sample_categorical(torch.zeros(0, 3, device=dev))
    assert actions.shape == (0,) and actions.dtype == torch.long and actions.device == dev
    assert log_probs.shape == (0,) and log_probs.device == dev


# --- errors -----------------------------------------------------------------------------------


def _raises_like_cpu(exc, match, fn, args):
    """`fn` raises the same error, with the same message, on CUDA inputs as on CPU inputs."""
    for a in (args, _cpu(args)):
        with pytest.raises(exc, match=re.escape(match)):
            fn(*a)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_inputs_raise_value_error(dev, dtype):
    rewards, values, dones, last = _rollout(6, 4, dtype, dev)
    bad = rewards.clone()
    bad[2, 1] = float("nan")
    _raises_like_cpu(ValueError, "pylander: `rewards` contains NaN or infinity",
                     ops.discounted_returns, [bad, dones, 0.9])
    boot = last.clone()
    boot[0] = float("inf")
    _raises_like_cpu(ValueError, "pylander: `rewards` or `bootstrap` contains NaN or infinity",
                     ops.discounted_returns, [rewards, dones, 0.9, boot])
    # T == 0: the bootstrap is still checked.
    _raises_like_cpu(ValueError, "pylander: `rewards` or `bootstrap` contains NaN or infinity",
                     ops.discounted_returns, [rewards[:0], dones[:0], 0.9, boot])
    _raises_like_cpu(ValueError,
                     "pylander: `rewards`, `values` or `last_values` contains NaN or infinity",
                     ops.gae, [rewards, values, dones, boot, 0.9, 0.9])

    logits, actions, weights = _batch(5, 3, dtype, dev)
    bad_logits = logits.clone()
    bad_logits[3, 0] = float("-inf")
    _raises_like_cpu(ValueError, "pylander: `logits` or `weights` contains NaN or infinity",
                     ops.pg_loss, [bad_logits, actions, weights])
    bad_weights = weights.clone()
    bad_weights[0] = float("nan")
    _raises_like_cpu(ValueError, "pylander: `logits` or `weights` contains NaN or infinity",
                     ops.pg_loss, [logits, actions, bad_weights])
    grads = [torch.tensor(1.0, dtype=dtype, device=dev)] * 2
    _raises_like_cpu(ValueError, "pylander: `logits` contains NaN or infinity",
                     _ops.pg_loss_backward, [*grads, bad_logits, actions, weights, "mean"])
    _raises_like_cpu(ValueError, "pylander: `logits` contains NaN or infinity",
                     ops.sample_categorical, [bad_logits])


def test_out_of_range_actions_raise_value_error(dev):
    logits, actions, weights = _batch(5, 3, torch.float32, dev)
    for bad_action in (3, -1):
        bad = actions.clone()
        bad[4] = bad_action
        _raises_like_cpu(ValueError, "pylander: `actions` must lie in [0, 3)",
                         ops.pg_loss, [logits, bad, weights])
        grads = [torch.tensor(1.0, device=dev)] * 2
        _raises_like_cpu(ValueError, "pylander: `actions` must lie in [0, 3)",
                         _ops.pg_loss_backward, [*grads, logits, bad, weights, "sum"])


def test_device_mismatch_errors(dev):
    cpu = torch.device("cpu")
    rewards, values, dones, last = _rollout(4, 3, torch.float32, dev)

    def mismatch(name, where, ref, ref_where):
        return (
            f"pylander: `{name}` is on {where} but `{ref}` is on {ref_where}; "
            "move them to the same device"
        )

    with pytest.raises(RuntimeError, match=re.escape(mismatch("dones", cpu, "rewards", dev))):
        ops.discounted_returns(rewards, dones.cpu(), 0.9)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("dones", dev, "rewards", cpu))):
        ops.discounted_returns(rewards.cpu(), dones, 0.9)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("bootstrap", cpu, "rewards", dev))):
        ops.discounted_returns(rewards, dones, 0.9, last.cpu())
    with pytest.raises(RuntimeError, match=re.escape(mismatch("values", cpu, "rewards", dev))):
        ops.gae(rewards, values.cpu(), dones, last, 0.9, 0.9)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("last_values", dev, "rewards", cpu))):
        ops.gae(rewards.cpu(), values.cpu(), dones.cpu(), last, 0.9, 0.9)

    logits, actions, weights = _batch(5, 3, torch.float32, dev)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("actions", cpu, "logits", dev))):
        ops.pg_loss(logits, actions.cpu(), weights)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("weights", cpu, "logits", dev))):
        ops.pg_loss(logits, actions, weights.cpu())
    g = torch.tensor(1.0, device=dev)
    with pytest.raises(RuntimeError, match=re.escape(mismatch("grad_loss", dev, "logits", cpu))):
        _ops.pg_loss_backward(g, g, logits.cpu(), actions.cpu(), weights.cpu(), "mean")
    with pytest.raises(RuntimeError, match=re.escape(mismatch("generator", cpu, "logits", dev))):
        ops.sample_categorical(logits, torch.Generator().manual_seed(0))


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.device_count() < 2, reason="needs two CUDA devices"
)
def test_second_gpu_and_cross_gpu_mismatch():
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    rewards, values, dones, last = _rollout(30, 9, torch.float64, d1)
    torch.testing.assert_close(
        ops.gae(rewards, values, dones, last, 0.9, 0.8).cpu(),
        ops.gae(*_cpu([rewards, values, dones, last, 0.9, 0.8])),
    )
    logits, actions, weights = _batch(64, 5, torch.float64, d1)
    loss, entropy = ops.pg_loss(logits, actions, weights)
    assert loss.device == d1 and entropy.device == d1
    sampled, _ = ops.sample_categorical(logits, torch.Generator(device=d1).manual_seed(0))
    assert sampled.device == d1
    message = f"`dones` is on {d0} but `rewards` is on {d1}"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.discounted_returns(rewards, dones.to(d0), 0.9)
    message = f"`generator` is on {d0} but `logits` is on {d1}"
    with pytest.raises(RuntimeError, match=re.escape(message)):
        ops.sample_categorical(logits, torch.Generator(device=d0))


def test_short_cuda_training_run(tmp_path):
    import json

    from pylander.train import main as train_main

    out = tmp_path / "cuda-run"
    code = train_main(["--env", "CartPole-v1", "--device", "cuda", "--total-steps", "4096",
                       "--num-envs", "8", "--num-steps", "64", "--epochs", "2", "--minibatches", "2",
                       "--eval-episodes", "4", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4096 and summary["eval_episodes"] == 4
    assert summary["eval_mean_return"] is not None


def test_benchmark_runs_on_the_gpu():
    from pylander import bench

    settings = bench.Settings(preset="tiny", repeats=2, sample_seconds=1e-5, warmup_calls=1,
                              returns_sizes=[(8, 3)], batch_sizes=[5], trainer_updates=4,
                              profile_updates=1, trainer_overrides={"num_envs": 2, "num_steps": 8})
    settings.on_gpu()
    settings.returns_sizes, settings.batch_sizes = [(8, 3), (50, 1000)], [5, 2000]
    results = bench.run_benchmarks(settings, ("ops", "trainer", "profile"), log=lambda m: None)
    assert results["meta"]["device"] == "cuda" and results["meta"]["gpu"]
    assert results["trainer"]["config"]["device"] == "cuda"
    for op, size in (("discounted_returns", "T50_N1000"), ("sample_categorical", "B2000_A4"),
                     ("pg_loss", "B2000_A4")):
        assert results["ops"][op][size]["native_us"] > 0
    assert results["trainer"]["steps_per_s"] > 0 and results["profile"]["ms_per_update"]["update"] > 0
    assert "policy on cuda" in bench.format_report(results)
