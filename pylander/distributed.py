"""Data-parallel training over torch.distributed (gloo on CPU, NCCL on GPU).

Every rank runs its own vector env with distinct seeds and computes gradients on its own
rollout; :class:`Collective` sums what must be global (gradients, advantage statistics, sample
counts), so every rank applies the same update and the parameters stay identical. With one
process every method is the identity and nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


class Collective:
    def __init__(self, device: torch.device = torch.device("cpu")):
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor; the input is left alone)."""
        if not self.active:
            return values
        out = values.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def sum_gradients(self, parameters) -> None:
        """Replace each parameter's gradient by its sum over ranks (one flat all-reduce)."""
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters."""
        if self.active:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def gather(self, items: list) -> list:
        """Concatenate a small Python list from every rank, in rank order, on every rank."""
        if not self.active:
            return items
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, items)
        return [x for part in gathered for x in part]

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (e.g. a stop request)."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)


def init_from_env(device: torch.device, timeout_s: float = 300.0) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...), if any.

    A rank that dies makes the others fail at their next collective within ``timeout_s``
    instead of hanging forever. Returns whether a process group was started.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
