"""Data-parallel training over torch.distributed (gloo on CPU, NCCL on GPU).

Every rank runs its own vector env with distinct seeds and computes gradients on its own
rollout; :class:`Collective` sums what must be global (gradients, advantage statistics, sample
counts), so every rank applies the same update and the parameters stay identical. With one
process every method is the identity and nothing here touches torch.distributed.

Failure model: every collective has a timeout (:func:`init_from_env`, ``PYLANDER_DIST_TIMEOUT``
seconds, 300 by default). A rank that dies closes its connections, so with gloo the others fail
at their next collective at once; a rank that hangs makes them fail after the timeout. Either
way each surviving rank raises :class:`DistributedError` naming itself and the operation, rather
than hanging. (With NCCL a dead peer is detected by NCCL's watchdog after the same timeout, which
then aborts the process.)
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

CPU = torch.device("cpu")
DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "PYLANDER_DIST_TIMEOUT"
_timeout_s = DEFAULT_TIMEOUT_S


class DistributedError(RuntimeError):
    """A collective with the other ranks failed: a rank died, hung, or disagrees with this one."""


class Collective:
    def __init__(self, device: torch.device = CPU):
        self.active = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.active else 0
        self.world_size = dist.get_world_size() if self.active else 1
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one torch.distributed call, turning a lost peer or timeout into DistributedError."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as exc:  # DistBackendError, DistNetworkError, gloo/NCCL errors
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} with the other ranks failed "
                f"({reason}). Another rank has probably died, hung or been stopped; see its own "
                f"output. A hung rank is given up on after {_timeout_s:g} s ({TIMEOUT_ENV})."
            ) from exc

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks (a new tensor; the input is left alone)."""
        if not self.active:
            return values
        out = values.detach().clone()
        self._call("summing statistics", dist.all_reduce, out, op=dist.ReduceOp.SUM)
        return out

    def sum_gradients(self, parameters) -> None:
        """Replace each parameter's gradient by its sum over ranks (one flat all-reduce).

        A parameter without a gradient counts as a zero one, so every rank reduces a buffer of
        the same layout whatever its local batch held.
        """
        if not self.active:
            return
        params = list(parameters)
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        self._call("summing gradients", dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def gather_columns(self, tensor: torch.Tensor) -> torch.Tensor:
        """``[T, N]`` from every rank -> ``[T, N * world_size]``, rank r's in columns r*N...

        Every rank must pass the same shape (the same ``num_steps`` and ``num_envs``).
        """
        if not self.active:
            return tensor
        dtype = tensor.dtype
        mine = tensor.to(torch.uint8) if dtype == torch.bool else tensor  # gloo has no bool
        parts = [torch.empty_like(mine) for _ in range(self.world_size)]
        self._call("gathering rollout layouts", dist.all_gather, parts, mine.contiguous())
        return torch.cat(parts, dim=1).to(dtype)

    def moments(self, values: torch.Tensor) -> tuple[float, float, float]:
        """``(count, mean, std)`` of ``values`` over every rank, in float64 (std unbiased; 0 for
        fewer than two values)."""
        count, total, total_sq = self.sum(
            torch.stack(
                [
                    torch.tensor(float(values.numel()), dtype=torch.float64, device=values.device),
                    values.double().sum(),
                    values.double().pow(2).sum(),
                ]
            )
        ).tolist()
        mean = total / count if count else 0.0
        std = (
            math.sqrt(max(total_sq - count * mean * mean, 0.0) / (count - 1)) if count > 1 else 0.0
        )
        return count, mean, std

    def minibatches(
        self, mask: torch.Tensor, epochs: int, minibatches: int, generator: torch.Generator
    ) -> list[tuple[torch.Tensor, float]]:
        """Shuffled minibatches of the global batch: ``(my flat indices into mask, global size)``.

        Every rank shuffles the same global list of the steps in ``mask`` (those of the
        ``[T, N * ranks]`` batch, rank r holding columns r*N ... r*N + N-1) and keeps its own
        steps of each slice, so the ranks' parts of minibatch b are exactly one process's
        minibatch b. With one process this is a plain shuffle of ``mask``'s steps, ``epochs``
        times, each cut into ``minibatches`` slices.
        """
        T, N = mask.shape
        columns = N * self.world_size
        global_index = self.gather_columns(mask).flatten().nonzero().squeeze(1).cpu()
        batches = []
        for _ in range(epochs):
            order = global_index[torch.randperm(global_index.numel(), generator=generator)]
            step, column = order // columns, order % columns - N * self.rank
            mine = (column >= 0) & (column < N)
            batches += [
                part[keep].to(mask.device)
                for part, keep in zip(
                    (step * N + column).tensor_split(minibatches), mine.tensor_split(minibatches)
                )
            ]
        sizes = self.sum(torch.tensor([float(b.numel()) for b in batches], device=mask.device))
        return list(zip(batches, sizes.tolist()))

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Make every rank start from rank 0's parameters."""
        if self.active:
            for tensor in module.state_dict().values():
                self._call("broadcasting the initial parameters", dist.broadcast, tensor, src=0)

    def gather(self, items: list) -> list:
        """Concatenate a small Python list from every rank, in rank order, on every rank."""
        if not self.active:
            return items
        gathered: list = [None] * self.world_size
        self._call("gathering results", dist.all_gather_object, gathered, items)
        return [x for part in gathered for x in part]

    def any(self, flag: bool) -> bool:
        """True on every rank if it is true on any rank (e.g. a stop request)."""
        if not self.active:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def on_main(self, fn: Callable[[], T], what: str = "a result from rank 0") -> T:
        """Call ``fn`` on rank 0 only; every rank returns its result, or raises its exception.

        For work only rank 0 does (loading a checkpoint, evaluating) whose outcome every rank
        must act on in the same way. The other ranks wait, within the collective timeout.
        """
        if not self.active:
            return fn()
        box: list = [None]
        if self.is_main:
            try:
                box[0] = (True, fn())
            except Exception as exc:  # re-raised below, on every rank
                box[0] = (False, picklable(exc))
        self._call(f"waiting for {what}", dist.broadcast_object_list, box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def check_identical(
        self, tensors: dict[str, torch.Tensor], what: str = "parameters"
    ) -> str | None:
        """Raise :class:`DistributedError` on every rank unless ``tensors`` are bitwise equal on all.

        Summed gradients are bitwise equal on every rank, so the replicated parameters must be
        too; a difference means the ranks ran different code or settings. Returns the digest
        (None with one process, which has nothing to compare).
        """
        if not self.active:
            return None
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode())
            flat = tensors[name].detach().cpu().contiguous().reshape(-1)
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        mine = digest.hexdigest()
        digests: list = [None] * self.world_size
        self._call(f"comparing {what}", dist.all_gather_object, digests, mine)
        if len(set(digests)) > 1:
            differ = [r for r, d in enumerate(digests) if d != digests[0]]
            raise DistributedError(
                f"the ranks' {what} differ (ranks {differ} differ from rank 0): data-parallel "
                "training has diverged; were all ranks started with the same pylander, torch "
                "and settings?"
            )
        return mine

    def check_same_settings(self, settings: str) -> None:
        """Raise ValueError on every rank unless all ranks pass the same ``settings`` text."""
        if not self.active:
            return
        mine = hashlib.sha256(settings.encode()).hexdigest()
        digests: list = [None] * self.world_size
        self._call("comparing settings", dist.all_gather_object, digests, mine)
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise ValueError(
                f"ranks {differ} were started with other settings than rank 0; every "
                "rank must get the same flags (and --config/--resume contents)"
            )


def picklable(exc: BaseException) -> BaseException:
    """``exc``, or a RuntimeError naming it where it cannot make the round trip through pickle
    (to another rank or process)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def timeout_from_env() -> float:
    """The collective timeout: ``PYLANDER_DIST_TIMEOUT`` seconds, else 300."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be positive, got {raw!r}")
    return value


def init_from_env(device: torch.device, timeout_s: float | None = None) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR...), if any.

    A rank that dies makes the others fail at their next collective (within ``timeout_s``,
    default :func:`timeout_from_env`) instead of hanging forever. Returns whether a process
    group was started.
    """
    global _timeout_s
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    _timeout_s = timeout_from_env() if timeout_s is None else float(timeout_s)
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(
                f"local rank {local_rank} has no GPU of its own: this machine has {count}, and "
                "NCCL needs one GPU per process. Start at most that many processes per machine "
                "(--procs / --nproc-per-node) or train on the CPU with --device cpu (gloo)."
            )
        torch.cuda.set_device(local_rank)
        kwargs["device_id"] = torch.device("cuda", local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=_timeout_s), **kwargs)
    except RuntimeError as exc:  # DistStoreError / DistNetworkError: nobody came, or no route
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise DistributedError(
            f"rank {rank} of {world} could not join the {backend} process group at {where} "
            f"within {_timeout_s:g} s: {reason}"
        ) from exc
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
