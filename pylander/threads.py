"""How many torch threads a training process uses (``--torch-threads``; 0, the default, chooses
here), and :func:`one_thread` for code whose result would otherwise depend on that number.

Two threads at most: the update's native kernel (``actor_critic_grads``) runs the actor and the
critic side by side, one each, and adds up in the same order on one thread or two; a third
would have nothing to do. The torch ops of the update and the rollout also give the same bits on
one thread or two (checked by ``tests/test_threads.py``), so the choice changes a run's speed, not
its numbers.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from pylander.config import TrainConfig

MAX_AUTO_THREADS = 2

_forked = False


def _after_fork_in_child() -> None:
    global _forked
    _forked = True


# libgomp's thread pool does not survive a fork: in a child of a process that has run a
# parallel region on several threads, torch hangs at its first parallel region with more than
# one. So a forked process (the tests' ranks, a user's multiprocessing pool) keeps to one.
os.register_at_fork(after_in_child=_after_fork_in_child)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, so ``taskset`` counts)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def training_threads(config: TrainConfig, processes: int = 1) -> int:
    """The torch threads for a process training ``config``: ``config.torch_threads`` if given
    (> 0), else two where the update has two cores to itself, else one.

    The update does not have them while ``--collect-ahead``'s workers step envs beside it,
    when ``processes`` trainings share the cores (``--jobs``), or when ``OMP_NUM_THREADS`` caps
    the threads (torchrun sets it to 1 for several ranks on one machine, as ``--procs`` does).
    ``--algo notebook`` takes one: its update is one small Adam scan per episode, and so does a
    forked process (see ``_after_fork_in_child``). Between updates
    the rollout workers (the default) or this process's own env steps take the cores, and the
    second thread sleeps.
    """
    if config.torch_threads > 0:
        return config.torch_threads
    if config.collect_ahead or config.algo != "reinforce" or _forked:
        return 1
    limit = MAX_AUTO_THREADS
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        limit = min(limit, int(omp))
    return max(1, min(limit, available_cores() // max(processes, 1)))


@contextlib.contextmanager
def using_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` torch threads, then restore the number there was."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """Run the block on one torch thread: LAPACK's QR (orthogonal init) gives other bits on two."""
    return using_threads(1)
