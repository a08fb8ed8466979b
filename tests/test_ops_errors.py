"""Bad input to the native ops, on every device: clear errors naming the argument, and fuzzing.

Tests taking ``device`` run on the CPU and on CUDA (both devices share ``csrc/checks.h``, so the
messages are the same); those taking ``cuda`` only on a GPU.
"""

from __future__ import annotations

import functools
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pylander import ops, reference

from conftest import DEVICES, random_batch, random_rollout

OPS = torch.ops.pylander


def bad_inputs(device: torch.device | str) -> list:
    """(call, exception, message fragment) for each kind of bad input, tensors on ``device``."""
    zeros = functools.partial(torch.zeros, device=device)
    tensor = functools.partial(torch.tensor, device=device)
    R, D = zeros(4, 2), zeros(4, 2, dtype=torch.bool)
    Z, ACT, W = zeros(3, 4), zeros(3, dtype=torch.long), torch.ones(3, device=device)
    NAN_R = tensor([[0.0, float("nan")]] * 4)
    INF_Z = tensor([[0.0, float("inf"), 0.0, 0.0]] * 3)
    returns, gae, pg_loss, sample = (
        ops.discounted_returns,
        ops.gae,
        ops.pg_loss,
        ops.sample_categorical,
    )
    return [
        (lambda: returns(R.long(), D, 0.9), RuntimeError, "`rewards` must be float32 or float64"),
        (lambda: returns(R.half(), D, 0.9), RuntimeError, "`rewards` must be float32"),
        (lambda: returns(R[0], D[0], 0.9), RuntimeError, "`rewards` must have shape [T, N]"),
        (lambda: returns(R, D.float(), 0.9), RuntimeError, "`dones` must be Bool"),
        (lambda: returns(R, D[:3], 0.9), RuntimeError, "`dones` must have the shape of `rewards`"),
        (lambda: returns(R, D, 1.5), ValueError, "`gamma` must be in [0, 1]"),
        (lambda: returns(R, D, -0.1), ValueError, "`gamma` must be in [0, 1]"),
        (lambda: returns(R, D, float("nan")), ValueError, "`gamma` must be in [0, 1]"),
        (lambda: returns(NAN_R, D, 0.9), ValueError, "`rewards` contains NaN"),
        (lambda: returns(R, D, 0.9, zeros(3)), RuntimeError, "`bootstrap` must have N=2"),
        (lambda: returns(R, D, 0.9, zeros(2).double()), RuntimeError, "`bootstrap` must be Float"),
        (
            lambda: returns(R, D, 0.9, tensor([0.0, float("inf")])),
            ValueError,
            "contains NaN or infinity",
        ),
        (lambda: gae(R, R, D, zeros(2), 0.9, 1.1), ValueError, "`lam` must be in [0, 1]"),
        (
            lambda: gae(R, R[:2], D, zeros(2), 0.9, 0.9),
            RuntimeError,
            "`values` must have the shape of `rewards`",
        ),
        (lambda: gae(R, NAN_R, D, zeros(2), 0.9, 0.9), ValueError, "contains NaN"),
        (lambda: gae(R, R, D, zeros(5), 0.9, 0.9), RuntimeError, "`last_values` must have N=2"),
        (lambda: pg_loss(Z.int(), ACT, W), RuntimeError, "`logits` must be float32 or float64"),
        (lambda: pg_loss(Z[0], ACT, W), RuntimeError, "`logits` must have shape [B, A]"),
        (lambda: pg_loss(Z, ACT.int(), W), RuntimeError, "`actions` must be Long"),
        (lambda: pg_loss(Z, ACT[:2], W), RuntimeError, "one per row of `logits`"),
        (lambda: pg_loss(Z, ACT, W.double()), RuntimeError, "`weights` must be Float"),
        (lambda: pg_loss(Z, ACT + 4, W), ValueError, "`actions` must lie in [0, 4)"),
        (lambda: pg_loss(Z, ACT - 1, W), ValueError, "`actions` must lie in [0, 4)"),
        (lambda: pg_loss(INF_Z, ACT, W), ValueError, "`logits` or `weights` contains NaN"),
        (lambda: pg_loss(Z, ACT, W * float("nan")), ValueError, "contains NaN"),
        (lambda: pg_loss(Z, ACT, W, "max"), ValueError, '`reduction` must be "mean" or "sum"'),
        (lambda: pg_loss(zeros(3, 0), ACT, W), RuntimeError, "at least one action"),
        (lambda: sample(Z.long()), RuntimeError, "`logits` must be float32"),
        (lambda: sample(zeros(2, 3, 4)), RuntimeError, "`logits` must have shape [B, A]"),
        (lambda: sample(INF_Z), ValueError, "`logits` contains NaN"),
        (lambda: sample(INF_Z * 0), ValueError, "`logits` contains NaN"),
    ]


@pytest.mark.parametrize("case", range(len(bad_inputs("cpu"))))
def test_bad_input_raises_named_error(case, device):
    call, error, fragment = bad_inputs(device)[case]
    with pytest.raises(error) as info:
        call()
    assert fragment in str(info.value)


def test_non_finite_inputs_raise_value_error(dtype, device):
    def raises(match, fn, *args):
        with pytest.raises(ValueError, match=re.escape(match)):
            fn(*args)

    rewards, dones, values, last = random_rollout(6, 4, dtype, 0.1, device=device)
    bad = rewards.clone()
    bad[2, 1] = float("nan")
    raises("pylander: `rewards` contains NaN or infinity", ops.discounted_returns, bad, dones, 0.9)
    boot = last.clone()
    boot[0] = float("inf")
    message = "pylander: `rewards` or `bootstrap` contains NaN or infinity"
    raises(message, ops.discounted_returns, rewards, dones, 0.9, boot)
    # T == 0: the bootstrap is still checked.
    raises(message, ops.discounted_returns, rewards[:0], dones[:0], 0.9, boot)
    raises(
        "pylander: `rewards`, `values` or `last_values` contains NaN or infinity",
        ops.gae,
        rewards,
        values,
        dones,
        boot,
        0.9,
        0.9,
    )

    logits, actions, weights = random_batch(5, 3, dtype, device)
    bad_logits = logits.clone()
    bad_logits[3, 0] = float("-inf")
    message = "pylander: `logits` or `weights` contains NaN or infinity"
    raises(message, ops.pg_loss, bad_logits, actions, weights)
    bad_weights = weights.clone()
    bad_weights[0] = float("nan")
    raises(message, ops.pg_loss, logits, actions, bad_weights)
    grads = [torch.tensor(1.0, dtype=dtype, device=device)] * 2
    raises(
        "pylander: `logits` contains NaN or infinity",
        OPS.pg_loss_backward,
        *grads,
        bad_logits,
        actions,
        weights,
        "mean",
    )
    raises("pylander: `logits` contains NaN or infinity", ops.sample_categorical, bad_logits)


def test_out_of_range_actions_raise_value_error(device):
    logits, actions, weights = random_batch(5, 3, torch.float32, device)
    for bad_action in (3, -1):
        bad = actions.clone()
        bad[4] = bad_action
        with pytest.raises(ValueError, match=re.escape("pylander: `actions` must lie in [0, 3)")):
            ops.pg_loss(logits, bad, weights)
        grads = [torch.tensor(1.0, device=device)] * 2
        with pytest.raises(ValueError, match=re.escape("pylander: `actions` must lie in [0, 3)")):
            OPS.pg_loss_backward(*grads, logits, bad, weights, "sum")


@pytest.mark.parametrize(
    "call,name",
    [
        (lambda r, m: ops.discounted_returns(r, r.bool(), 0.9, m(r[0])), "`bootstrap` is on meta"),
        (lambda r, m: ops.gae(r, m(r), r.bool(), r[0], 0.9, 0.9), "`values` is on meta"),
        (lambda r, m: ops.pg_loss(r, r[:, 0].long(), m(r[:, 0])), "`weights` is on meta"),
    ],
)
def test_device_mismatch_is_named(call, name):
    # On a CPU-only machine a meta tensor takes the path a CUDA tensor mixed with CPU ones takes
    # (test_device_mismatch_errors covers the real case on a GPU).
    with pytest.raises(RuntimeError, match=name):
        call(torch.zeros(4, 2), lambda t: t.to("meta"))


def test_device_mismatch_errors(cuda):
    cpu = torch.device("cpu")
    rewards, dones, values, last = random_rollout(4, 3, torch.float32, 0.1, device=cuda)

    def mismatch(name, where, ref, ref_where):
        return re.escape(
            f"pylander: `{name}` is on {where} but `{ref}` is on {ref_where}; "
            "move them to the same device"
        )

    with pytest.raises(RuntimeError, match=mismatch("dones", cpu, "rewards", cuda)):
        ops.discounted_returns(rewards, dones.cpu(), 0.9)
    with pytest.raises(RuntimeError, match=mismatch("dones", cuda, "rewards", cpu)):
        ops.discounted_returns(rewards.cpu(), dones, 0.9)
    with pytest.raises(RuntimeError, match=mismatch("bootstrap", cpu, "rewards", cuda)):
        ops.discounted_returns(rewards, dones, 0.9, last.cpu())
    with pytest.raises(RuntimeError, match=mismatch("values", cpu, "rewards", cuda)):
        ops.gae(rewards, values.cpu(), dones, last, 0.9, 0.9)
    with pytest.raises(RuntimeError, match=mismatch("last_values", cuda, "rewards", cpu)):
        ops.gae(rewards.cpu(), values.cpu(), dones.cpu(), last, 0.9, 0.9)

    logits, actions, weights = random_batch(5, 3, torch.float32, cuda)
    with pytest.raises(RuntimeError, match=mismatch("actions", cpu, "logits", cuda)):
        ops.pg_loss(logits, actions.cpu(), weights)
    with pytest.raises(RuntimeError, match=mismatch("weights", cpu, "logits", cuda)):
        ops.pg_loss(logits, actions, weights.cpu())
    g = torch.tensor(1.0, device=cuda)
    with pytest.raises(RuntimeError, match=mismatch("grad_loss", cuda, "logits", cpu)):
        OPS.pg_loss_backward(g, g, logits.cpu(), actions.cpu(), weights.cpu(), "mean")
    with pytest.raises(RuntimeError, match=mismatch("generator", cpu, "logits", cuda)):
        ops.sample_categorical(logits, torch.Generator().manual_seed(0))


# --- fuzz: no crash, no silent wrong answer ---------------------------------------------------

finite_floats = st.floats(-1e6, 1e6, allow_nan=False, width=32)
any_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


def lists_of(size: int, elements: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(elements, min_size=size, max_size=size)


# Hypothesis runs the test function many times per call, so the device is a parameter, not a
# (function-scoped) fixture.
@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(0, 12),
    N=st.integers(0, 5),
    gamma=st.floats(-0.5, 1.5),
    lam=st.floats(-0.5, 1.5),
    data=st.data(),
)
def test_fuzz_scans(device, T, N, gamma, lam, data):
    values = data.draw(lists_of(T * N, st.one_of(finite_floats, any_floats)))
    rewards = torch.tensor(values, dtype=torch.float32).reshape(T, N)
    dones = torch.tensor(data.draw(lists_of(T * N, st.booleans())), dtype=torch.bool).reshape(T, N)
    on = lambda t: t.to(device)  # noqa: E731
    bad = not (0 <= gamma <= 1 and 0 <= lam <= 1) or not torch.isfinite(rewards).all()
    if bad:
        with pytest.raises(ValueError):
            ops.gae(on(rewards), on(rewards), on(dones), on(torch.zeros(N)), gamma, lam)
        return
    r, last = rewards.double(), torch.zeros(N, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            ops.discounted_returns(on(r), on(dones), gamma).cpu(),
            reference.discounted_returns(r, dones, gamma),
            rtol=1e-9,
            atol=1e-6,
        )
        torch.testing.assert_close(
            ops.gae(on(r), on(r), on(dones), on(last), gamma, lam).cpu(),
            reference.gae(r, r, dones, last, gamma, lam),
            rtol=1e-9,
            atol=1e-6,
        )


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=150, deadline=None)
@given(B=st.integers(0, 9), A=st.integers(1, 6), data=st.data())
def test_fuzz_pg_loss_and_sampling(device, B, A, data):
    values = data.draw(lists_of(B * A, st.one_of(finite_floats, any_floats)))
    logits = torch.tensor(values, dtype=torch.float64).reshape(B, A)
    actions = torch.tensor(data.draw(lists_of(B, st.integers(-1, A))), dtype=torch.long)
    weights = torch.tensor(data.draw(lists_of(B, finite_floats)), dtype=torch.float64)
    finite = bool(torch.isfinite(logits).all())
    in_range = bool(((actions >= 0) & (actions < A)).all())
    on_device = [t.to(device) for t in (logits, actions, weights)]
    if not finite or not in_range:
        with pytest.raises(ValueError):
            ops.pg_loss(*on_device)
    else:
        for got, want in zip(ops.pg_loss(*on_device), reference.pg_loss(logits, actions, weights)):
            torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
    if not finite:
        with pytest.raises(ValueError):
            ops.sample_categorical(on_device[0])
    else:
        sampled, log_probs = (t.cpu() for t in ops.sample_categorical(on_device[0]))
        want = torch.log_softmax(logits, -1).gather(1, sampled.view(-1, 1)).view(-1)
        torch.testing.assert_close(log_probs, want, rtol=1e-9, atol=1e-9)
        assert bool((want > -math.inf).all())  # never a zero-probability action
