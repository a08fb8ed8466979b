"""``sample_categorical`` on every device: shapes, seeding, the draws' distribution, gradients.

Tests taking ``device`` run on the CPU and on CUDA; those taking ``cuda`` only on a GPU.
"""

from __future__ import annotations

import pytest
import torch

from pylander import ops

from conftest import dominant_logits, random_batch, tolerance


@pytest.mark.parametrize("B,A", [(1, 1), (5, 4), (64, 4), (1000, 7), (0, 4)])
def test_sample_categorical_shapes_and_log_probs(B, A, dtype, device):
    logits = torch.randn(B, A, dtype=dtype, device=device) * 4
    for generator in (torch.Generator(device=device).manual_seed(1), None):
        actions, log_probs = ops.sample_categorical(logits, generator)
        assert actions.shape == (B,) and actions.dtype == torch.long and actions.device == device
        assert log_probs.shape == (B,) and log_probs.dtype == dtype and log_probs.device == device
        if B:
            assert actions.min() >= 0 and actions.max() < A
        want = torch.log_softmax(logits, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(log_probs, want, **tolerance(dtype))


def test_sample_categorical_seeded_generator_reproduces(dtype, device):
    logits = random_batch(4096, 7, dtype, device)[0]
    draws = []
    for seed in (123, 123, 124):
        g = torch.Generator(device=device).manual_seed(seed)
        draws.append(ops.sample_categorical(logits, g))
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])
    assert not torch.equal(draws[0][0], draws[2][0])
    actions, log_probs = draws[0]
    assert actions.dtype == torch.long and actions.device == device and log_probs.dtype == dtype
    assert actions.min() >= 0 and actions.max() < 7
    ref = torch.log_softmax(logits.double(), -1).gather(1, actions[:, None]).squeeze(1)
    torch.testing.assert_close(log_probs, ref.to(dtype), **tolerance(dtype))

    # The default generator of the device, seeded through torch, reproduces too.
    torch.manual_seed(7)
    first = ops.sample_categorical(logits)
    torch.manual_seed(7)
    assert torch.equal(first[0], ops.sample_categorical(logits)[0])


def test_generator_without_device_index_draws_on_the_current_device(cuda):
    # torch.Generator(device="cuda") reports device "cuda", with no index; the trainer makes one.
    logits = torch.randn(64, 3, device=cuda)
    first, _ = ops.sample_categorical(logits, torch.Generator(device="cuda").manual_seed(1))
    again, _ = ops.sample_categorical(logits, torch.Generator(device="cuda").manual_seed(1))
    assert torch.equal(first, again)


def test_sample_categorical_is_inverse_cdf_of_torch_uniforms(dtype, device):
    """The kernels draw one float64 uniform per row with at::rand on the generator."""
    logits = random_batch(4096, 7, dtype, device, seed=5)[0]
    actions, _ = ops.sample_categorical(logits, torch.Generator(device=device).manual_seed(9))
    gen = torch.Generator(device=device).manual_seed(9)
    u = torch.rand(4096, generator=gen, dtype=torch.float64, device=device)
    z = logits.double().cpu()
    p = torch.exp(z - z.max(1, keepdim=True).values)
    hit = (p.cumsum(1) > (u.cpu() * p.sum(1))[:, None]) & (p > 0)
    expected = torch.where(hit.any(1), hit.int().argmax(1), p.shape[1] - 1)
    assert (actions.cpu() != expected).sum() <= 1  # a tie at a boundary is vanishingly rare


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Survival probability of the chi-square statistic of ``counts`` against ``probs``.

    Categories of probability 0 are left out (the caller checks that none was drawn).
    """
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    stat = ((counts[keep] - expected) ** 2 / expected).sum()
    half_dof = torch.tensor((keep.sum().item() - 1) / 2, dtype=torch.float64)
    return torch.special.gammaincc(half_dof, stat / 2).item()  # chi2(k - 1)'s survival function


@pytest.mark.parametrize(
    "row",
    [
        [0.0, 1.0, 2.0, 3.0],
        [5.0, -5.0, 0.0, 0.5, 1.0],
        [1000.0, 1001.0, 999.0],
        [-1e4, -1e4 + 2.0],
        [1.0, 0.0, -1.0, 2.0, -1000.0],
    ],
)
def test_sample_categorical_matches_softmax_distribution(row, dtype, device):
    n = 200_000
    logits = torch.tensor(row, dtype=dtype, device=device).expand(n, -1).contiguous()
    gen = torch.Generator(device=device).manual_seed(123)
    actions, log_probs = (t.cpu() for t in ops.sample_categorical(logits, gen))
    counts = torch.bincount(actions, minlength=len(row)).double()
    log_softmax = torch.log_softmax(torch.tensor(row, dtype=torch.float64), -1)
    probs = log_softmax.exp()
    # The last row's last category has probability exactly 0 in double: it must never be drawn.
    assert counts[probs == 0].sum() == 0
    # With a fixed seed this is one deterministic draw; a wrong distribution (e.g. off by one
    # category, or probabilities off by 1% at this n) gives p ~ 1e-10 or smaller.
    p_value = chi_square_pvalue(counts, probs)
    assert p_value > 1e-4, f"p={p_value:.2e}, counts={counts.tolist()}"
    torch.testing.assert_close(log_probs, log_softmax[actions].to(dtype), **tolerance(dtype))


def test_chi_square_check_rejects_a_wrong_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    shifted = torch.tensor([0.11, 0.19, 0.3, 0.4], dtype=torch.float64) * 200_000
    assert chi_square_pvalue(shifted, probs) < 1e-10


@pytest.mark.parametrize("low", [-1e4, -300.0])
def test_sample_categorical_never_picks_zero_probability(low, dtype, device):
    logits = dominant_logits(10_000, 3, dtype, device, low)
    for generator in (torch.Generator(device=device).manual_seed(0), None):
        actions, log_probs = ops.sample_categorical(logits, generator)
        assert torch.equal(actions.cpu(), torch.arange(10_000) % 3)
        if low == -1e4:  # the other categories' probabilities underflow to exactly 0
            assert torch.all(log_probs == 0)
        torch.testing.assert_close(log_probs, torch.zeros_like(log_probs))


def test_sample_categorical_log_prob_gradient(device):
    logits = torch.randn(32, 4, dtype=torch.float64, device=device, requires_grad=True)
    weights = torch.arange(32, device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    actions, log_probs = ops.sample_categorical(logits, gen)
    (log_probs * weights).sum().backward()
    ref = logits.detach().clone().requires_grad_()
    chosen = torch.log_softmax(ref, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
    (chosen * weights).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)
