"""Many ``torch.optim.Adam`` steps on fixed gradients in one native call per parameter.

The notebook's update takes one Adam step per episode step, each on a gradient computed at the
rollout-time parameters; since none of those gradients depends on the steps before it, the T
steps are an elementwise recurrence in the parameter and Adam's two moments, which
:func:`pylander.ops.adam_scan` runs in C++. :func:`apply_adam_scan` applies it to a live
optimizer and keeps the optimizer's state exactly as the Python loop would leave it, so
``optimizer.state_dict()`` checkpoints and resumes are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from pylander import ops

# Adam options the native recurrence does not implement: each must be off (falsy).
_UNSUPPORTED = ("weight_decay", "amsgrad", "maximize", "fused", "capturable", "differentiable")
# torch keeps `step` in float32, whose integers are exact up to here.
_MAX_STEP = 2**24


def _check_group(group: dict) -> None:
    for key in _UNSUPPORTED:
        if group.get(key):
            raise ValueError(
                f"apply_adam_scan: the optimizer's {key}={group[key]!r} is not "
                "supported; it must be off (0, False or None)"
            )


def _state_of(optimizer: torch.optim.Optimizer, param: Tensor) -> dict:
    """The parameter's Adam state, created as ``Adam._init_group`` creates it on a first step."""
    state = optimizer.state[param]
    if len(state) == 0:
        # A CPU scalar in float32, or float64 under a float64 default dtype, as torch makes it.
        dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
        state["step"] = torch.tensor(0.0, dtype=dtype)
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    return state


@torch.no_grad()
def apply_adam_scan(
    optimizer: torch.optim.Adam, params_and_grads: Iterable[tuple[Tensor, Tensor]]
) -> None:
    """Take ``T`` steps of ``optimizer`` with fixed gradients, as this loop does, bit for bit::

        for t in range(T):
            for param, grads in params_and_grads:
                param.grad = grads[t]
            optimizer.step()

    Each ``grads`` is ``[T, *param.shape]``, with the same ``T`` for every parameter. The
    optimizer's other parameters are left alone (as the loop leaves parameters whose ``.grad``
    is None), and so is every ``.grad``. Parameters, ``exp_avg``, ``exp_avg_sq`` and ``step`` are
    updated in place, so the optimizer goes on as if it had taken the steps itself.

    Supports ``torch.optim.Adam`` with any lr, betas and eps, the default ``foreach`` choice
    (bitwise equal on the CPU) and no weight decay, amsgrad, maximize, fused or capturable.
    The step counts must stay below 2**24, where torch's float32 ``step`` stops being exact.
    """
    if not isinstance(optimizer, torch.optim.Adam):
        raise TypeError(
            f"apply_adam_scan: `optimizer` must be a torch.optim.Adam, "
            f"got {type(optimizer).__name__}"
        )
    pairs = list(params_and_grads)
    for param, grads in pairs:
        if grads.dim() != param.dim() + 1 or grads.shape[1:] != param.shape:
            raise ValueError(
                f"apply_adam_scan: `grads` must have shape [T, *param.shape] = "
                f"[T, {', '.join(map(str, param.shape))}], got {list(grads.shape)}"
            )
    horizons = sorted({grads.shape[0] for _, grads in pairs})
    if len(horizons) > 1:
        raise ValueError(
            "apply_adam_scan: every `grads` must have the same number of steps T "
            f"(first dimension), got {horizons}"
        )
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    updates = []
    for param, grads in pairs:  # every input checked before any parameter changes
        group = groups.get(id(param))
        if group is None:
            raise ValueError(
                "apply_adam_scan: a parameter in `params_and_grads` is not in `optimizer`"
            )
        _check_group(group)
        state = _state_of(optimizer, param)
        beta1, beta2 = (float(b) for b in group["betas"])
        step = int(state["step"])
        if state["step"].dtype == torch.float32 and step + grads.shape[0] > _MAX_STEP:
            raise ValueError(
                f"apply_adam_scan: {step} + {grads.shape[0]} steps passes 2**24, "
                "beyond which torch's float32 step count is not exact"
            )
        new = ops.adam_scan(
            param.detach().reshape(-1),
            grads.reshape(grads.shape[0], -1),
            state["exp_avg"].reshape(-1),
            state["exp_avg_sq"].reshape(-1),
            step,
            float(group["lr"]),
            beta1,
            beta2,
            float(group["eps"]),
        )
        updates.append((param, state, new, step + grads.shape[0]))
    for param, state, (new_param, exp_avg, exp_avg_sq), step in updates:
        param.copy_(new_param.view_as(param))
        state["exp_avg"].copy_(exp_avg.view_as(param))
        state["exp_avg_sq"].copy_(exp_avg_sq.view_as(param))
        state["step"].fill_(step)
