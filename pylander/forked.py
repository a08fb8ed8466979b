"""Run a function on several inputs at once, in forked child processes: :func:`map_forked`.

Forking copies the caller's memory (a policy, its statistics) for free and needs nothing to be
picklable but the results. Where forking is not possible (no ``fork`` start method, or a
daemonic caller, which multiprocessing forbids to have children) the inputs run one after the
other here, with the same results.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Sequence
from typing import TypeVar

from pylander.split_env import die_with_parent

Item = TypeVar("Item")
Result = TypeVar("Result")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as ``taskset`` sets it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def can_fork() -> bool:
    return "fork" in mp.get_all_start_methods() and not mp.current_process().daemon


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
        for item in items[1:]:
            reader, writer = context.Pipe(duplex=False)
            child = context.Process(
                target=_child, args=(fn, item, writer, reader, os.getpid()), daemon=True
            )
            child.start()
            writer.close()
            children.append((child, reader))
        results = [fn(items[0])]
        for child, reader in children:
            try:
                status, value = reader.recv()
            except EOFError:
                child.join(5)
                raise RuntimeError(
                    f"a forked {fn.__name__} process died (exit code {child.exitcode})"
                ) from None
            if status == "error":
                raise value
            results.append(value)
        finished = True
        return results
    finally:
        for child, reader in children:
            reader.close()
            if finished:  # it sent its result and is exiting
                child.join(5)
            if child.is_alive():
                child.kill()
            child.join()


def _child(fn, item, writer, reader, parent_pid: int) -> None:
    die_with_parent(parent_pid)
    reader.close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        result = ("ok", fn(item))
    except BaseException as exc:
        result = ("error", exc)
    try:
        writer.send(result)
    except Exception as exc:  # an unpicklable exception or result
        with contextlib.suppress(Exception):
            writer.send(("error", RuntimeError(f"{fn.__name__} in a forked process: {exc}")))
    writer.close()
