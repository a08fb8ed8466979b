"""The clipped-surrogate option of the native ``pg_loss`` (PPO's policy loss).

Gradient, loss and clip fraction against PPO's surrogate written in plain torch
(``reference.clipped_pg_loss``, differentiated by autograd), ``clip_coef=0`` against the plain
loss bit for bit, opcheck, and input validation.
"""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

import pylander  # noqa: F401  (loads the ops)
from pylander import ops, reference

from conftest import tolerance

OPS = torch.ops.pylander
EPS = 0.2
ENT_COEF = 0.37  # an entropy bonus, so the entropy's share of the gradient is checked too
MARGIN = 0.05  # ratios stay this far from 1 +- eps, so float32 rounding cannot clip them otherwise


def ppo_inputs(B: int, A: int, dtype: torch.dtype, eps: float = EPS, seed: int = 0):
    """Random logits, actions and signed advantages, and old log-probabilities that put each row's
    ratio below, inside or above ``[1 - eps, 1 + eps]``, at least MARGIN from its ends."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, A, generator=g, dtype=torch.float64) * 2).to(dtype)
    actions = torch.randint(0, A, (B,), generator=g)
    weights = torch.randn(B, generator=g, dtype=torch.float64).to(dtype)
    bands = torch.tensor(
        [[0.3, 1 - eps - MARGIN], [1 - eps + MARGIN, 1 + eps - MARGIN], [1 + eps + MARGIN, 2.5]],
        dtype=torch.float64,
    )
    low, high = bands[torch.randint(0, 3, (B,), generator=g)].unbind(1)
    ratio = low + (high - low) * torch.rand(B, generator=g, dtype=torch.float64)
    chosen = torch.log_softmax(logits.double(), -1).gather(1, actions[:, None])[:, 0]
    old_log_probs = (chosen - ratio.log()).to(dtype)
    return logits, actions, weights, old_log_probs, ratio


def loss_and_grad(impl, logits, actions, weights, old_log_probs, clip_coef, reduction):
    z = logits.clone().requires_grad_()
    loss, entropy, clip_fraction = impl.clipped_pg_loss(
        z, actions, weights, old_log_probs, clip_coef, reduction
    )
    (loss - ENT_COEF * entropy).backward()
    return loss.detach(), entropy.detach(), clip_fraction, z.grad


@pytest.mark.parametrize("B,A", [(1, 1), (2, 3), (33, 4), (257, 6), (5000, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("eps", [0.1, EPS])
def test_matches_autograd_through_the_clipped_surrogate(B, A, reduction, eps, dtype):
    logits, actions, weights, old, ratio = ppo_inputs(B, A, dtype, eps, seed=B * 7 + A)
    args = (logits, actions, weights, old, eps, reduction)
    got = loss_and_grad(ops, *args)
    want = loss_and_grad(reference, *args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tolerance(dtype))
    if B >= 257:  # enough rows for every case: clipped, and outside the range but not clipped
        w = weights.double()
        clipped = ((ratio > 1 + eps) & (w > 0)) | ((ratio < 1 - eps) & (w < 0))
        unclipped_outside = ((ratio > 1 + eps) & (w < 0)) | ((ratio < 1 - eps) & (w > 0))
        assert clipped.any() and unclipped_outside.any() and (ratio - 1).abs().lt(eps).any()
        assert got[2].item() == pytest.approx(clipped.double().mean().item())


def test_each_case_row_by_row(dtype):
    # Rows: ratio above / below / inside the range, each with a positive and a negative weight,
    # then a ratio that overflows to infinity with a positive weight (clipped: a finite constant).
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.1, 0.9], dtype=torch.float64)
    weights = torch.tensor([2.0, -2.0, 3.0, -3.0, 1.0, -1.0, 4.0], dtype=dtype)
    logits = torch.tensor([[0.3, -1.0, 2.0]] * 7, dtype=dtype)
    actions = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    chosen = torch.log_softmax(logits.double(), -1).gather(1, actions[:, None])[:, 0]
    old = torch.cat([chosen[:6] - ratio.log(), torch.tensor([-1e4])]).to(dtype)
    z = logits.clone().requires_grad_()
    loss, _, clip_fraction = ops.clipped_pg_loss(z, actions, weights, old, EPS, "sum")
    loss.backward()

    clipped = torch.tensor([True, False, False, True, False, False, True])
    effective = torch.where(clipped[:6], 0.0, weights[:6].double() * ratio)
    bounded = torch.tensor([1 + EPS, 0, 0, 1 - EPS, 0, 0, 1 + EPS], dtype=torch.float64)
    terms = torch.where(clipped, bounded, torch.cat([ratio, torch.ones(1)])) * weights.double()
    onehot = torch.nn.functional.one_hot(actions, 3).double()
    grad = -torch.cat([effective, torch.zeros(1)])[:, None] * (onehot - torch.softmax(logits, -1))
    torch.testing.assert_close(loss, -terms.sum().to(dtype), **tolerance(dtype))
    torch.testing.assert_close(z.grad, grad.to(dtype), **tolerance(dtype))
    assert clip_fraction.item() == pytest.approx(3 / 7)


@pytest.mark.parametrize("B,A", [(0, 3), (1, 1), (9, 2), (300, 5), (5000, 4)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_clip_coef_zero_is_the_plain_loss_bit_for_bit(B, A, reduction, dtype):
    logits, actions, weights, old, _ = ppo_inputs(B, A, dtype, seed=B + A)
    results = []
    for call in (
        lambda z, w: (*ops.pg_loss(z, actions, w, reduction), None),
        lambda z, w: ops.clipped_pg_loss(z, actions, w, old, 0.0, reduction),
        lambda z, w: OPS.pg_loss(z, actions, w, reduction),  # the schema's defaults
    ):
        z, w = logits.clone().requires_grad_(), weights.clone().requires_grad_()
        loss, entropy, clip_fraction = call(z, w)
        (1.3 * loss - ENT_COEF * entropy).backward()
        results.append((loss, entropy, z.grad, w.grad))
        assert clip_fraction is None or clip_fraction.item() == 0.0
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert torch.equal(got, want)


def test_gradient_flows_to_the_logits_only():
    logits, actions, weights, old, _ = ppo_inputs(64, 4, torch.float64)
    z, w, o = (t.clone().requires_grad_() for t in (logits, weights, old))
    loss, entropy, clip_fraction = ops.clipped_pg_loss(z, actions, w, o, EPS)
    (loss - ENT_COEF * entropy).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    assert w.grad is None and o.grad is None
    assert not clip_fraction.requires_grad


def opcheck_cases():
    logits, actions, weights, old, _ = ppo_inputs(16, 4, torch.float64)
    grad = lambda x: x.clone().requires_grad_()  # noqa: E731
    scalar = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    return [
        (OPS.pg_loss.default, (grad(logits), actions, weights, "mean", old, EPS)),
        (OPS.pg_loss.default, (grad(logits), actions, grad(weights), "sum", grad(old), EPS)),
        (OPS.pg_loss.default, (grad(logits), actions, weights, "mean", old, 0.0)),
        (
            OPS.pg_loss_backward.default,
            (scalar(1.5), scalar(-0.2), logits, actions, weights, "mean", old, EPS),
        ),
    ]


@pytest.mark.parametrize("case", range(len(opcheck_cases())))
def test_opcheck(case):
    op, args = opcheck_cases()[case]
    opcheck(op, args)


Z = torch.randn(4, 3)
ACT = torch.tensor([0, 1, 2, 0])
W = torch.randn(4)
OLD = torch.log_softmax(Z, -1).gather(1, ACT[:, None])[:, 0]
GRADS = (torch.tensor(1.0), torch.tensor(0.0))

BAD_INPUTS = [
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD[:3], EPS),
        RuntimeError,
        "`old_log_probs` must have B=4 entries",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD[:, None], EPS),
        RuntimeError,
        "`old_log_probs` must have shape [B]",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD.double(), EPS),
        RuntimeError,
        "`old_log_probs` must be Float",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD * float("nan"), EPS),
        ValueError,
        "`old_log_probs` contains NaN or infinity",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD - float("inf"), EPS),
        ValueError,
        "`old_log_probs` contains NaN or infinity",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD, -0.1),
        ValueError,
        "`clip_coef` must be a finite number >= 0",
    ),
    (
        lambda: ops.clipped_pg_loss(Z, ACT, W, OLD, float("nan")),
        ValueError,
        "`clip_coef` must be a finite number >= 0",
    ),
    (
        lambda: OPS.pg_loss(Z, ACT, W, "mean", None, EPS),
        ValueError,
        "`clip_coef` > 0 needs `old_log_probs`",
    ),
    (
        lambda: OPS.pg_loss_backward(*GRADS, Z, ACT, W, "mean", OLD[:2], EPS),
        RuntimeError,
        "`old_log_probs` must have B=4 entries",
    ),
    (
        lambda: OPS.pg_loss_backward(*GRADS, Z, ACT, W, "mean", OLD / 0, EPS),
        ValueError,
        "`old_log_probs` contains NaN or infinity",
    ),
    (
        lambda: OPS.pg_loss_backward(*GRADS, Z, ACT, W, "mean", OLD, -1.0),
        ValueError,
        "`clip_coef` must be a finite number >= 0",
    ),
]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)))
def test_bad_input_raises_named_error(case):
    call, error, fragment = BAD_INPUTS[case]
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


def test_device_mismatch_is_named():
    # A meta tensor takes the same dispatch path as a CUDA one mixed with CPU ones.
    with pytest.raises(RuntimeError, match="`old_log_probs` is on meta"):
        ops.clipped_pg_loss(Z, ACT, W, OLD.to("meta"), EPS)
