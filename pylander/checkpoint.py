"""Checkpoints: written atomically, loaded safely, validated before use.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: loading never executes code from the file. It is written to a
temporary file in the same directory, fsynced, and renamed over the old one, so a process killed
at any moment (SIGKILL included) leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "pylander-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the run it is loaded into."""


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file, then fsync and rename it onto ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def save_checkpoint(path: Path, *, env_id: str, architecture: dict, algorithm: dict,
                    trainer: dict, config: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, "env_id": env_id,
               "architecture": architecture, "algorithm": algorithm, "trainer": trainer,
               "config": config}
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(path: str | Path, *, env_id: str | None = None,
                    architecture: dict | None = None) -> dict:
    """Load and validate a checkpoint; raise :class:`CheckpointError` naming any problem.

    ``env_id`` and ``architecture``, when given, must match what the checkpoint was trained on.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError,
            ValueError, TypeError, AttributeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is not a readable pylander checkpoint (truncated, corrupted, or not a "
            f"checkpoint at all): {reason[:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a pylander checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {payload.get('version')}, "
                              f"this pylander reads version {VERSION}")
    if env_id is not None and payload["env_id"] != env_id:
        raise CheckpointError(f"{path} was trained on {payload['env_id']}, not {env_id}")
    if architecture is not None and payload["architecture"] != architecture:
        raise CheckpointError(f"{path} holds a different network: {payload['architecture']} "
                              f"vs this run's {architecture}")
    return payload
