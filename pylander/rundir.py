"""The run directory: what marks one as holding a run, and the lock that keeps it to one run.

A training run holds an exclusive lock on its directory from before it writes anything until it
ends (:func:`claim`), so a second run, ``--force`` or ``--resume`` on a directory in use is
refused, naming the process that holds it. The lock is ``flock`` on ``<run>/.lock``: the kernel
releases it when the holder dies, so a run killed outright (SIGKILL) leaves a stale ``.lock``
file that blocks nothing. The file holds the holder's pid and host, for the refusal's message;
a run that ends normally removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from pylander.checkpoint import atomic_write, remove_stale_temporaries
from pylander.config import TrainConfig

LOCK_NAME = ".lock"
RUN_MARKERS = [
    "config.toml",
    "checkpoint.pt",
    "metrics.csv",
    "summary.json",
    "best.pt",
    "learning_curve.png",
]
"""Files that show a directory holds a run (the lock file is not one: it outlives a killed run)."""


class RunDirectoryError(ValueError):
    """A run directory cannot be used: another process holds it, or its run is finished."""


@dataclass
class _Lock:
    fd: int
    path: Path
    pid: int
    thread: int
    created: bool
    """Whether claiming made the directory (it is removed again if the run left it empty)."""
    depth: int = 1


_held: dict[str, _Lock] = {}
"""This process's locks, by lock file path: a thread may claim a directory it holds again (the
CLI claims it, then the trainer it calls does)."""


@contextlib.contextmanager
def claim(out: str | Path, comm: Any = None) -> Iterator[Path]:
    """Hold the exclusive lock on run directory ``out`` (created if missing) for the with-block.

    Raises :class:`RunDirectoryError` naming the holder if another process (or another thread of
    this one) holds it. With ``comm`` (a :class:`~pylander.distributed.Collective`) only rank 0
    takes the lock, and a refusal is raised on every rank.
    """
    out = Path(out)
    taken: list[_Lock] = []

    def take() -> None:
        taken.append(_acquire(out))

    if comm is None or not comm.active:
        take()
    else:
        comm.on_main(take, "rank 0 to lock the run directory")
    try:
        yield out
    finally:
        for lock in taken:
            _release(lock)


def holder(out: str | Path) -> str | None:
    """Who holds the lock on ``out`` ("pid 123 on host h, since ..."), or None if nobody does."""
    path = Path(out) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or an unreadable one, which the real claim will report)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe(path)
    finally:
        os.close(fd)  # releases the probe's shared lock
    return None


def _acquire(out: Path) -> _Lock:
    path = (out / LOCK_NAME).absolute()
    mine = _held.get(str(path))
    if mine is not None and mine.pid == os.getpid():
        if mine.thread != threading.get_ident():
            raise RunDirectoryError(
                f"{out} is in use by another thread of this process ({_describe(path)})"
            )
        mine.depth += 1
        return mine
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirectoryError(
                f"{out} is in use by another training run "
                f"({_describe(path)}); wait for it to end or stop it"
            ) from None
        # The previous holder removes the file before it lets go, so a lock won on a file that is
        # no longer at `path` guards nothing: open the new one and lock that instead.
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        opened = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (
            opened.st_dev,
            opened.st_ino,
        ):
            break
        os.close(fd)
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(owner).encode())
    lock = _Lock(fd, path, os.getpid(), threading.get_ident(), created)
    _held[str(path)] = lock
    return lock


def _release(lock: _Lock) -> None:
    lock.depth -= 1
    if lock.depth:
        return
    del _held[str(lock.path)]
    with contextlib.suppress(FileNotFoundError):
        lock.path.unlink()  # while still holding it: see _acquire
    os.close(lock.fd)
    if lock.created:  # a run refused before it wrote anything leaves no empty directory
        with contextlib.suppress(OSError):
            lock.path.parent.rmdir()


def _describe(path: Path) -> str:
    try:
        owner = json.loads(path.read_text())
        return f"pid {owner['pid']} on host {owner['host']}, since {owner['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # being written, or not ours
        return f"its holder has not written its name into {path} yet"


# --- what a directory holds ----------------------------------------------------------------


def markers(out: Path) -> list[str]:
    """The run files in ``out``: empty for a directory that holds no run."""
    return [name for name in RUN_MARKERS if (out / name).exists()]


def finished(out: Path, total_steps: int) -> str | None:
    """Why the run in ``out`` cannot go on with a budget of ``total_steps`` (None if it can).

    A run stopped by its budget or by solving its task is finished: resuming it would only
    evaluate it again, unless the budget is raised past what it has done.
    """
    try:
        summary = json.loads((out / "summary.json").read_text())
        reason, steps = summary["stop_reason"], int(summary["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no result yet (killed, interrupted) or unreadable: resuming is the fix
    try:
        budget = TrainConfig.load(out / "config.toml").total_steps
    except ValueError:
        budget = steps
    if reason not in ("budget", "solved") or total_steps > max(steps, budget):
        return None
    how = "solved its task" if reason == "solved" else "spent its budget"
    return (
        f"the run is finished: it {how} at {steps} steps; resume it with a total_steps "
        f"above {max(steps, budget)} (--total-steps)"
    )


def check(out: Path, config: TrainConfig, *, resume: bool, force: bool) -> None:
    """Raise :class:`RunDirectoryError` unless a run may start (or, with ``resume``, go on) in
    ``out``: a new run needs a directory that holds none (or ``force`` to replace it); a resumed
    one needs a checkpoint and a budget left."""
    if resume:
        if not (out / "checkpoint.pt").is_file():
            raise RunDirectoryError(
                f"--resume {out}: no checkpoint.pt there to resume from (the run stopped before "
                f"its first checkpoint); start it again with --out {out} --force"
            )
        done = finished(out, config.total_steps)
        if done:
            raise RunDirectoryError(f"--resume {out}: {done}")
        return
    held = markers(out)
    if held and not force:
        raise RunDirectoryError(
            f"--out {out} already holds a run ({', '.join(held)}); use --resume {out} to "
            "continue it, --force to replace it, or another --out"
        )


def clear(out: Path) -> None:
    """Delete the run files in ``out`` (for ``--force``); other files and the lock stay."""
    for path in out.iterdir():
        if path.name in RUN_MARKERS or path.name.startswith("events.out.tfevents"):
            path.unlink() if path.is_file() else shutil.rmtree(path)


def prepare(out: Path, config: TrainConfig, *, resume: bool) -> None:
    """Make ``out`` ready for the run and write its ``config.toml`` (call while holding it).

    A resumed run's ``config.toml`` keeps its run-time settings (``TrainConfig.runtime_fields``)
    as they were: flags such as ``--quiet`` given with ``--resume`` apply to that invocation only.
    """
    out.mkdir(parents=True, exist_ok=True)
    # Left behind by a run killed while saving (SIGKILL); the files themselves are intact.
    remove_stale_temporaries(out, ["config.toml", "checkpoint.pt", "best.pt", "summary.json"])
    saved = config
    if resume and (out / "config.toml").is_file():
        before = TrainConfig.load(out / "config.toml")
        saved = replace(
            config,
            **{
                f.name: getattr(before, f.name)
                for f in fields(config)
                if f.name in TrainConfig.runtime_fields()
            },
        )
    atomic_write(out / "config.toml", lambda fh: fh.write(saved.to_toml().encode()))
