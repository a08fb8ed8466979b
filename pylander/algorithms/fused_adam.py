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
    by calling ``torch._fused_adam_`` directly, exactly as ``Adam.step()`` would.

    It keeps lists of the state's tensors between steps, made again whenever the optimizer's
    ``state`` or param group is another object (the first step, ``load_state_dict``). Replace the
    state only that way: tensors swapped into the same ``state`` dict would not be seen."""

    def __init__(self, optimizer: torch.optim.Adam):
        (group,) = optimizer.param_groups
        if not group["fused"] or group["amsgrad"] or group["weight_decay"] or group["maximize"]:
            raise ValueError("FusedAdamStep needs Adam(fused=True) without amsgrad, weight decay "
                             "or maximize")  # fmt: skip
        if len({(p.device, p.dtype) for p in group["params"]}) != 1:
            raise ValueError("FusedAdamStep needs every parameter on one device, in one dtype")
        self.optimizer = optimizer
        # The (state, group) that _gather_state made the step's lists for.
        self._made_for: tuple[dict, dict] | None = None

    def step(self) -> None:
        # The group is read on every step: optimizer.load_state_dict replaces it and the state
        # (a resume), and the learning-rate schedule writes to the new one.
        (group,) = self.optimizer.param_groups
        if not self._made_for_now(group) and not self._gather_state(group):
            self.optimizer.step()  # the first step creates the state
            return
        self._steps.add_(1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            self._params,
            [p.grad for p in self._params],
            self._exp_avgs,
            self._exp_avg_sqs,
            [],
            self._counters,
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

    def _made_for_now(self, group: dict) -> bool:
        made_for = self._made_for  # by identity: == would compare the dicts' tensors
        return made_for is not None and made_for[0] is self.optimizer.state and made_for[1] is group

    def _gather_state(self, group: dict) -> bool:
        """Make the lists of the state's tensors that every step passes to the kernel, once per
        state (the first step's, a ``load_state_dict``'s); False while there is no state yet.

        The step counters become views of one tensor, so that one add advances them all:
        ``torch._foreach_add_`` over a dozen scalars took as long as the fused kernel. Rebuilding
        the lists on every step (a dozen dict lookups and tensor hashes) took twice as long."""
        params, state = group["params"], self.optimizer.state
        if any(p not in state for p in params):
            return False
        states = [state[p] for p in params]
        self._steps = torch.stack([s["step"] for s in states])
        self._counters = list(self._steps.unbind())
        for s, counter in zip(states, self._counters):
            s["step"] = counter
        self._params = list(params)
        self._exp_avgs = [s["exp_avg"] for s in states]
        self._exp_avg_sqs = [s["exp_avg_sq"] for s in states]
        self._made_for = (state, group)
        return True
