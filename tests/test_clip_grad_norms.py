"""``clip_grad_norms_`` on every device: torch's clip_grad_norm_ arithmetic per group, in place
(bit for bit on the composite kernel's devices; the CPU kernel's double-precision sums agree to
rounding); non-finite norms; opcheck; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch.library import opcheck

import pylander  # noqa: F401  (loads the ops)
from pylander import ops
from pylander.bench.mlp import COMPOSITE

from conftest import tolerance

SHAPES = [(64, 8), (64,), (64, 64), (64,), (4, 64), (4,)]


def gradients(dtype, device, scale: float, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=dtype) * scale).to(device) for s in SHAPES]


def reference(grads: list[torch.Tensor], sizes: list[int], max_norm: float) -> torch.Tensor:
    """What Reinforce did in Python before the op: ``clip_grad_norm_``'s steps per group."""
    norms, offset = [], 0
    for size in sizes:
        group = grads[offset : offset + size]
        offset += size
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(group)))
        torch._foreach_mul_(group, (max_norm / (norm + 1e-6)).clamp(max=1.0))
        norms.append(norm)
    return torch.stack(norms).max()


@pytest.mark.parametrize("sizes", [[6], [3, 3], [2, 2, 2]], ids=str)
@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])  # under, around and over the limit
def test_clips_each_group_as_clip_grad_norm_does(sizes, scale, dtype, device):
    ours, theirs = gradients(dtype, device, scale), gradients(dtype, device, scale)
    norm = ops.clip_grad_norms_(ours, sizes, 0.5)
    expected = reference(theirs, sizes, 0.5)
    assert norm.dtype == dtype and norm.device == ours[0].device
    if torch.device(device).type == "cpu":
        torch.testing.assert_close(norm, expected, **tolerance(dtype))
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, **tolerance(dtype))
    else:
        assert torch.equal(norm, expected)
        for a, b in zip(ours, theirs):
            assert torch.equal(a, b)
    # and the result is what clipping means: no group's norm above the limit
    offset = 0
    for size in sizes:
        group_norm = torch.linalg.vector_norm(
            torch.cat([g.flatten() for g in ours[offset:][:size]])
        )
        assert group_norm <= 0.5 * (1 + 1e-5)
        offset += size


def test_the_composite_kernel_is_clip_grad_norm_bit_for_bit(dtype):
    """The composite kernel (what CUDA runs) called on the CPU, where its own kernel takes
    precedence, so that CI without a GPU checks its bits too."""
    ours, theirs = gradients(dtype, "cpu", 5.0), gradients(dtype, "cpu", 5.0)
    with torch.no_grad():
        norm = torch.ops.pylander.clip_grad_norms_.default.redispatch(COMPOSITE, ours, [3, 3], 0.5)
    assert torch.equal(norm, reference(theirs, [3, 3], 0.5))
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_non_contiguous_gradients_are_clipped_in_place(dtype, device):
    ours, theirs = gradients(dtype, device, 5.0), gradients(dtype, device, 5.0)
    base = ours[2].t().contiguous()
    ours[2] = base.t()  # a transposed view: the kernel must write through to `base`
    norm = ops.clip_grad_norms_(ours, [6], 0.5)
    expected = reference(theirs, [6], 0.5)
    torch.testing.assert_close(norm, expected, **tolerance(dtype))
    torch.testing.assert_close(base.t(), theirs[2], **tolerance(dtype))
    assert not torch.equal(base.t(), gradients(dtype, device, 5.0)[2])  # it was clipped


def test_torch_clip_grad_norm_agrees(dtype):
    params = [torch.nn.Parameter(torch.zeros(s, dtype=dtype)) for s in SHAPES]
    for p, g in zip(params, gradients(dtype, "cpu", 3.0)):
        p.grad = g
    grads = gradients(dtype, "cpu", 3.0)
    norm = ops.clip_grad_norms_(grads, [6], 0.5)
    assert torch.allclose(norm, torch.nn.utils.clip_grad_norm_(params, 0.5))
    for p, g in zip(params, grads):
        assert torch.allclose(p.grad, g, rtol=1e-6, atol=0)


def test_a_non_finite_gradient_gives_a_non_finite_norm(device):
    grads = gradients(torch.float32, device, 1.0)
    grads[3][0] = float("nan")
    assert not math.isfinite(ops.clip_grad_norms_(grads, [3, 3], 0.5).item())


def test_opcheck(dtype, device):
    opcheck(torch.ops.pylander.clip_grad_norms_, (gradients(dtype, device, 5.0), [2, 4], 0.5))


@pytest.mark.parametrize(
    "sizes, max_norm, fragment",
    [
        ([3, 2], 0.5, "`group_sizes` add up to 5 gradients, but 6 were given"),
        ([6, 0], 0.5, "every group in `group_sizes` must hold at least one gradient, got 0"),
        ([], 0.5, "`group_sizes` must name at least one group"),
        ([6], 0.0, "`max_norm` must be positive and finite, got 0"),
        ([6], float("inf"), "`max_norm` must be positive and finite, got inf"),
    ],
)
def test_bad_inputs_raise_named_errors(sizes, max_norm, fragment):
    with pytest.raises(ValueError) as info:
        ops.clip_grad_norms_(gradients(torch.float32, "cpu", 1.0), sizes, max_norm)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value).split("Exception raised from")[0].strip()


def test_integer_gradients_are_refused():
    with pytest.raises(RuntimeError, match="`grads` must be float32 or float64"):
        ops.clip_grad_norms_([torch.ones(3, dtype=torch.long)], [1], 0.5)
