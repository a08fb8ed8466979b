"""Run a function on several inputs at once, in forked child processes: :func:`map_forked`.

Forking copies the caller's memory (a policy, its statistics) for free and needs nothing to be
picklable but the results. Where forking is not safe or possible (not Linux, or a daemonic
caller, which multiprocessing forbids to have children) the inputs run one after the other here,
with the same results.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from pylander.distributed import picklable
from pylander.split_env import become_worker, stop_worker

Item = TypeVar("Item")
Result = TypeVar("Result")
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def can_fork() -> bool:
    """Linux only: elsewhere forking a process with torch (and its threads) loaded is unsafe."""
    return sys.platform.startswith("linux") and not mp.current_process().daemon


def map_forked(fn: Callable[[Item], Result], items: Sequence[Item]) -> list[Result]:
    """``[fn(item) for item in items]``: ``items[0]`` here, each other one in a forked child.

    An exception in a child is raised here (as a ``RuntimeError`` naming it if it cannot be
    pickled); a child that dies raises ``RuntimeError``. The children ignore SIGINT/SIGTERM,
    which are this process's to handle, die with it, and are killed if it stops waiting.
    """
    if len(items) <= 1 or not can_fork():
        return [fn(item) for item in items]
    context = mp.get_context("fork")
    children = []
    finished = False
    try:
        # Blocked while forking, so that no child runs this process's handlers before it has
        # set its own; signals that arrive meanwhile are delivered here once unblocked.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for item in items[1:]:
                reader, writer = context.Pipe(duplex=False)
                child = context.Process(
                    target=_child, args=(fn, item, writer, reader, os.getpid()), daemon=True
                )
                child.start()
                writer.close()
                children.append((child, reader))
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        results = [fn(items[0])]
        for child, reader in children:
            try:
                status, value = reader.recv()
            except EOFError:
                child.join(5)
                name = getattr(fn, "__qualname__", repr(fn))
                raise RuntimeError(
                    f"a forked process running {name} died (exit code {child.exitcode})"
                ) from None
            if status == "error":
                raise value
            results.append(value)
        finished = True
        return results
    finally:
        for child, reader in children:
            # A child that sent its result is exiting; one still at work is not waited for.
            stop_worker(child, reader, (lambda: None) if finished else child.kill)


def _child(fn, item, writer, reader, parent_pid: int) -> None:
    become_worker(parent_pid, reader)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # blocked by the parent while forking
    # One thread: the parent's OpenMP/MKL thread pool did not survive the fork, and a parallel
    # region in the child (MKL's tanh on a big enough tensor) would wait for it forever.
    torch.set_num_threads(1)
    try:
        result = ("ok", fn(item))
    except BaseException as exc:
        result = ("error", picklable(exc))
    try:
        writer.send(result)
    except Exception as exc:  # an unpicklable result
        with contextlib.suppress(Exception):
            writer.send(("error", RuntimeError(f"a forked process's result: {exc}")))
    writer.close()
