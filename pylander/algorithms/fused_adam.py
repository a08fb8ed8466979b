"""``torch.optim.Adam(fused=True).step()`` as its one kernel call.

For the 64-unit networks of ``--algo reinforce`` the optimizer's per-call Python bookkeeping
(grouping tensors by device and dtype, profiler hooks, state checks) cost several times the fused
kernel itself, once per minibatch. The state stays the optimizer's own, so checkpoints, resume
and ``optimizer.step()`` interoperate with this step bit for bit.
"""

from __future__ import annotations

import torch


class FusedAdamStep:
    """Steps a single-group, fused ``torch.optim.Adam`` (no amsgrad, weight decay or maximize)
    by calling ``torch._fused_adam_`` directly, exactly as ``Adam.step()`` would."""

    def __init__(self, optimizer: torch.optim.Adam):
        (group,) = optimizer.param_groups
        if not group["fused"] or group["amsgrad"] or group["weight_decay"] or group["maximize"]:
            raise ValueError("FusedAdamStep needs Adam(fused=True) without amsgrad, weight decay "
                             "or maximize")  # fmt: skip
        if len({(p.device, p.dtype) for p in group["params"]}) != 1:
            raise ValueError("FusedAdamStep needs every parameter on one device, in one dtype")
        self.optimizer = optimizer
        self._counters: list[torch.Tensor] = []  # views of self._steps, once made

    def step(self) -> None:
        # The group is read on every step: optimizer.load_state_dict replaces it (a resume), and
        # the learning-rate schedule writes to the new one.
        (group,) = self.optimizer.param_groups
        params, state = group["params"], self.optimizer.state
        if any(p not in state for p in params):
            self.optimizer.step()  # the first step creates the state
            return
        states = [state[p] for p in params]
        steps = self._step_counters(states)
        self._steps.add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [s["exp_avg"] for s in states],
            [s["exp_avg_sq"] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            weight_decay=0.0,
            eps=group["eps"],
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _step_counters(self, states: list[dict]) -> list[torch.Tensor]:
        """Each parameter's step counter, made a view of one tensor so that one add advances
        them all: ``torch._foreach_add_`` over a dozen scalars took as long as the fused kernel.
        Made again whenever the state holds other tensors (the first step, a load_state_dict)."""
        steps = [s["step"] for s in states]
        if len(steps) != len(self._counters) or any(
            a is not b for a, b in zip(steps, self._counters)
        ):
            self._steps = torch.stack(steps)
            self._counters = list(self._steps.unbind())
            for s, counter in zip(states, self._counters):
                s["step"] = counter
        return self._counters
