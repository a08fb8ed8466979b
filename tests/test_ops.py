"""Every native op on every device: parity with the pure-Python reference, opcheck, torch.compile.

Tests taking the ``device`` fixture run on the CPU and on CUDA; those taking ``cuda`` (CUDA vs
CPU kernel parity, streams, a second GPU) run only on a GPU. Sampling is in
``test_ops_sampling.py`` and bad input in ``test_ops_errors.py``; ``pytest -k cuda`` on the three
files selects every CUDA test, and a machine without a GPU reports them as skipped.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch.library import opcheck
from torch.torch_version import TorchVersion

import pylander
from pylander import ops, reference

from conftest import dominant_logits, needs_cuda, on_cpu, random_batch, random_rollout, tolerance

OPS = torch.ops.pylander
SHAPES = [(1, 1), (1, 7), (9, 1), (5, 3), (37, 4), (128, 16), (0, 3), (4, 0)]


# --- discounted_returns / gae --------------------------------------------------------------


@pytest.mark.parametrize("T,N", SHAPES)
@pytest.mark.parametrize("done_prob", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99, 1.0])
def test_discounted_returns_matches_reference(T, N, done_prob, gamma, dtype, device):
    rewards, dones, _, last = random_rollout(T, N, dtype, done_prob, seed=T * 31 + N, device=device)
    for bootstrap in (None, last):
        got = ops.discounted_returns(rewards, dones, gamma, bootstrap)
        want = reference.discounted_returns(*on_cpu(rewards, dones, gamma, bootstrap))
        assert got.device == device
        torch.testing.assert_close(got.cpu(), want, **tolerance(dtype))


def test_discounted_returns_matches_notebook(device):
    rewards = torch.randn(250, dtype=torch.float64)
    dones = torch.zeros(250, 1, dtype=torch.bool, device=device)
    got = ops.discounted_returns(rewards[:, None].to(device), dones, 0.99)
    torch.testing.assert_close(got[:, 0].cpu(), reference.discount_rewards(rewards, 0.99))


def test_bootstrap_only_reaches_unfinished_tails(device):
    rewards = torch.zeros(3, 2, dtype=torch.float64, device=device)
    dones = torch.tensor([[False, False], [False, True], [False, False]], device=device)
    bootstrap = torch.tensor([8.0, 8.0], dtype=torch.float64, device=device)
    got = ops.discounted_returns(rewards, dones, 0.5, bootstrap)
    # column 0 never ends: 8 * 0.5**(3 - t); column 1 ended at t=1, so t<=1 sees no bootstrap
    want = torch.tensor([[1.0, 0.0], [2.0, 0.0], [4.0, 4.0]], dtype=torch.float64)
    torch.testing.assert_close(got.cpu(), want)


@pytest.mark.parametrize("T,N", SHAPES)
@pytest.mark.parametrize("done_prob", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.0, 0.5), (1.0, 1.0), (0.9, 0.0)])
def test_gae_matches_reference(T, N, done_prob, gamma, lam, dtype, device):
    rewards, dones, values, last = random_rollout(T, N, dtype, done_prob, T + 7 * N, device)
    got = ops.gae(rewards, values, dones, last, gamma, lam)
    want = reference.gae(*on_cpu(rewards, values, dones, last), gamma, lam)
    assert got.device == device
    torch.testing.assert_close(got.cpu(), want, **tolerance(dtype))


def test_gae_with_lambda_one_is_returns_minus_values(device):
    rewards, dones, values, last = random_rollout(40, 5, torch.float64, 0.1, device=device)
    advantages = ops.gae(rewards, values, dones, last, 0.97, 1.0)
    returns = ops.discounted_returns(rewards, dones, 0.97, last)
    torch.testing.assert_close(advantages, returns - values)


@pytest.mark.parametrize("T,N", [(1, 1), (6, 3), (20, 2)])
def test_scan_gradients_match_reference_autograd(T, N, device):
    rewards, dones, values, last = random_rollout(T, N, torch.float64, 0.3, seed=3, device=device)
    upstream = torch.randn(T, N, dtype=torch.float64).to(device)

    def grads(fn, *inputs):
        leaves = [x.clone().requires_grad_() for x in inputs]
        (fn(*leaves) * upstream).sum().backward()
        return [leaf.grad for leaf in leaves]

    got = grads(lambda r, b: ops.discounted_returns(r, dones, 0.9, b), rewards, last)
    want = grads(lambda r, b: reference_returns_autograd(r, dones, 0.9, b), rewards, last)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    got = grads(lambda r, v, last_v: ops.gae(r, v, dones, last_v, 0.9, 0.8), rewards, values, last)
    want = grads(
        lambda r, v, last_v: reference_gae_autograd(r, v, dones, last_v, 0.9, 0.8),
        rewards,
        values,
        last,
    )
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def reference_returns_autograd(rewards, dones, gamma, bootstrap):
    """Differentiable version of the reference loop, built from tensor ops."""
    rows, running = [], bootstrap
    for t in reversed(range(rewards.shape[0])):
        running = rewards[t] + gamma * (~dones[t]).to(rewards.dtype) * running
        rows.append(running)
    return torch.stack(rows[::-1])


def reference_gae_autograd(rewards, values, dones, last, gamma, lam):
    rows, advantage, next_value = [], torch.zeros_like(last), last
    for t in reversed(range(rewards.shape[0])):
        live = (~dones[t]).to(rewards.dtype)
        delta = rewards[t] + gamma * live * next_value - values[t]
        advantage = delta + gamma * lam * live * advantage
        rows.append(advantage)
        next_value = values[t]
    return torch.stack(rows[::-1])


# --- pg_loss -------------------------------------------------------------------------------


@pytest.mark.parametrize("B,A", [(1, 1), (1, 4), (7, 2), (64, 4), (300, 9), (0, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_pg_loss_and_gradients_match_reference(B, A, reduction, scale, dtype, device):
    logits, actions, weights = random_batch(B, A, dtype, seed=B * 13 + A, scale=scale)
    results = []
    for impl, where in ((ops, device), (reference, torch.device("cpu"))):
        z = logits.clone().to(where).requires_grad_()  # a fresh leaf on each device
        w = weights.clone().to(where).requires_grad_()
        loss, entropy = impl.pg_loss(z, actions.to(where), w, reduction)
        (loss - 0.37 * entropy).backward()
        results.append([t.detach().cpu() for t in (loss, entropy, z.grad, w.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **tolerance(dtype))


def test_pg_loss_is_stable_for_huge_logits(dtype, device):
    logits = torch.tensor([[1e4, -1e4, 0.0, 5e3], [-3e4, -3e4, -3e4, -3e4]], dtype=dtype)
    actions = torch.tensor([0, 2], device=device)
    weights = torch.tensor([1.0, 2.0], dtype=dtype, device=device)
    z = logits.to(device).requires_grad_()
    loss, entropy = ops.pg_loss(z, actions, weights, "sum")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(entropy) and torch.isfinite(z.grad).all()
    torch.testing.assert_close(loss.cpu(), torch.tensor(2 * math.log(4), dtype=dtype))


# --- opcheck ---------------------------------------------------------------------------------


THREE_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")  # all but AOT


def opcheck_cases(device: torch.device, dtype: torch.dtype) -> list:
    """(op, args, opcheck's test_utils or None for all) for every op and argument pattern."""
    rewards, dones, values, last = random_rollout(6, 3, dtype, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    logits, actions, weights = random_batch(8, 4, dtype, device)
    grad = lambda x: x.clone().requires_grad_()  # noqa: E731
    # The draw is deterministic for these logits, so eager and traced outputs can match.
    one_hot_logits = dominant_logits(8, 4, dtype, device)
    scalar = lambda v: torch.tensor(v, dtype=dtype, device=device)  # noqa: E731
    pg_backward_args = (scalar(1.5), scalar(-0.2), logits, actions, weights, "mean")
    return [
        (OPS.discounted_returns.default, (grad(rewards), dones, 0.99, grad(last)), None),
        (OPS.discounted_returns.default, (grad(rewards), dones, 0.9, None), None),
        (OPS.discounted_returns.default, (rewards, dones, 0.5, None), None),
        (OPS.gae.default, (grad(rewards), grad(values), dones, grad(last), 0.99, 0.95), None),
        (OPS.pg_loss.default, (grad(logits), actions, grad(weights), "mean"), None),
        (OPS.pg_loss.default, (grad(logits), actions, grad(weights), "sum"), None),
        (OPS.pg_loss.default, (grad(logits), actions, weights, "sum"), None),
        (OPS.pg_loss_backward.default, pg_backward_args, None),
        (OPS.sample_categorical.default, (one_hot_logits, None), None),
        # AOT dispatch takes a Generator argument from torch 2.13 on (2.11 raised
        # NotImplementedError for it; 2.12 untried); the case above covers it without one.
        (
            OPS.sample_categorical.default,
            (one_hot_logits, g),
            None if TorchVersion(torch.__version__) >= "2.13" else THREE_CHECKS,
        ),
        # opcheck's AOT test sums outputs into the first one's dtype (int64 actions) and fails on
        # the float grads; the other three checks still cover the autograd registration.
        (OPS.sample_categorical.default, (grad(one_hot_logits), None), THREE_CHECKS),
        (OPS.sample_categorical.default, (grad(one_hot_logits), g), THREE_CHECKS),
    ]


@pytest.mark.parametrize("case", range(len(opcheck_cases(torch.device("cpu"), torch.float64))))
def test_opcheck(case, dtype, device):
    op, args, utils = opcheck_cases(device, dtype)[case]
    kwargs = {} if utils is None else {"test_utils": utils}
    opcheck(op, args, **kwargs)


def test_ops_compile_fullgraph(device):
    rewards, dones, values, last = random_rollout(10, 4, torch.float32, device=device)
    logits = torch.randn(16, 4, device=device)
    actions = torch.randint(0, 4, (16,), device=device)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(logits, rewards, values):
        adv = ops.gae(rewards, values, dones, last, 0.99, 0.95)
        loss, entropy = ops.pg_loss(logits, actions, adv.flatten()[:16], "mean")
        return loss - 0.01 * entropy

    advantages = ops.gae(rewards, values, dones, last, 0.99, 0.95)
    eager = ops.pg_loss(logits, actions, advantages.flatten()[:16])
    torch.testing.assert_close(step(logits, rewards, values), eager[0] - 0.01 * eager[1])


# --- CUDA only: the CUDA kernels against the CPU kernels, streams, several GPUs ---------------


@needs_cuda
def test_built_with_cuda_kernels():
    assert pylander.CUDA_KERNELS, "pylander was built without its CUDA kernels"


SCAN_SHAPES = [(1, 1), (7, 3), (64, 129), (1000, 2), (3, 1000), (0, 5), (5, 0), (0, 0)]


@pytest.mark.parametrize("shape", SCAN_SHAPES)
@pytest.mark.parametrize("with_bootstrap", [False, True])
def test_discounted_returns_matches_cpu(cuda, dtype, shape, with_bootstrap):
    rewards, dones, _, last = random_rollout(*shape, dtype, 0.1, device=cuda)
    bootstrap = last if with_bootstrap else None
    out = ops.discounted_returns(rewards, dones, 0.97, bootstrap)
    ref = ops.discounted_returns(*on_cpu(rewards, dones, 0.97, bootstrap))
    assert out.device == cuda and out.dtype == dtype and out.shape == rewards.shape
    torch.testing.assert_close(out.cpu(), ref, **tolerance(dtype))


@pytest.mark.parametrize("shape", SCAN_SHAPES)
def test_gae_matches_cpu(cuda, dtype, shape):
    rewards, dones, values, last = random_rollout(*shape, dtype, 0.1, device=cuda)
    args = [rewards, values, dones, last, 0.99, 0.95]
    out = ops.gae(*args)
    ref = ops.gae(*on_cpu(*args))
    assert out.device == cuda and out.dtype == dtype and out.shape == rewards.shape
    torch.testing.assert_close(out.cpu(), ref, **tolerance(dtype))


def test_scans_non_contiguous_and_edge_discounts(cuda, dtype):
    rewards, dones, values, last = random_rollout(40, 24, dtype, 0.1, device=cuda)
    r, v, d = rewards[::2, ::3], values[::2, ::3], dones[::2, ::3]  # non-contiguous views
    for gamma, lam in [(0.0, 0.0), (1.0, 1.0), (0.5, 0.0)]:
        torch.testing.assert_close(
            ops.discounted_returns(r, d, gamma, last[::3]).cpu(),
            ops.discounted_returns(*on_cpu(r, d, gamma, last[::3])),
            **tolerance(dtype),
        )
        torch.testing.assert_close(
            ops.gae(r, v, d, last[::3], gamma, lam).cpu(),
            ops.gae(*on_cpu(r, v, d, last[::3], gamma, lam)),
            **tolerance(dtype),
        )


PG_SHAPES = [(1, 1), (5, 4), (257, 7), (1000, 18), (3, 1000), (0, 3)]


@pytest.mark.parametrize("shape", PG_SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_pg_loss_forward_backward_matches_cpu(cuda, dtype, shape, reduction):
    logits, actions, weights = random_batch(*shape, dtype, cuda)
    results = []
    for device in (cuda, torch.device("cpu")):
        z = logits.detach().to(device).requires_grad_()  # a leaf on each device
        w = weights.detach().to(device).requires_grad_()
        loss, entropy = ops.pg_loss(z, actions.to(device), w, reduction)
        assert loss.shape == () and loss.dtype == dtype and loss.device == device
        (loss - 0.01 * entropy).backward()
        results.append([t.detach().cpu() for t in (loss, entropy, z.grad, w.grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **tolerance(dtype))


@pytest.mark.parametrize("shape", PG_SHAPES)
def test_pg_loss_backward_matches_cpu(cuda, dtype, shape):
    logits, actions, weights = random_batch(*shape, dtype, cuda, seed=3)
    for reduction in ("mean", "sum"):
        grads = [torch.tensor(v, dtype=dtype, device=cuda) for v in (0.7, -1.9)]
        args = [*grads, logits, actions, weights, reduction]
        out = OPS.pg_loss_backward(*args)
        assert out.device == cuda and out.shape == logits.shape
        torch.testing.assert_close(
            out.cpu(), OPS.pg_loss_backward(*on_cpu(*args)), **tolerance(dtype)
        )
        # 0-dim CPU gradients are accepted too (torch lets CPU scalars mix with CUDA tensors).
        out_cpu_grads = OPS.pg_loss_backward(*on_cpu(*grads), logits, actions, weights, reduction)
        torch.testing.assert_close(out_cpu_grads, out)


def test_kernels_use_the_current_stream(cuda):
    rewards, dones, values, last = random_rollout(50, 33, torch.float32, 0.1, device=cuda)
    logits, actions, weights = random_batch(300, 5, torch.float32, cuda)

    def run():
        advantages = ops.gae(rewards, values, dones, last, 0.9, 0.8)
        return advantages, ops.pg_loss(logits, actions, weights)

    expected = run()
    stream = torch.cuda.Stream(device=cuda)
    stream.wait_stream(torch.cuda.current_stream(cuda))
    with torch.cuda.stream(stream):
        got = run()
    torch.cuda.current_stream(cuda).wait_stream(stream)
    torch.testing.assert_close(got, expected)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_second_cuda_device_and_cross_device_mismatch():
    d0, d1 = torch.device("cuda", 0), torch.device("cuda", 1)
    rewards, dones, values, last = random_rollout(30, 9, torch.float64, 0.1, device=d1)
    torch.testing.assert_close(
        ops.gae(rewards, values, dones, last, 0.9, 0.8).cpu(),
        ops.gae(*on_cpu(rewards, values, dones, last, 0.9, 0.8)),
    )
    logits, actions, weights = random_batch(64, 5, torch.float64, d1)
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
