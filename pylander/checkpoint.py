"""Checkpoints: written atomically, loaded safely, validated before use.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: loading never executes code from the file. It is written to a
temporary file in the same directory, fsynced, and renamed over the old one, so a process killed
at any moment (SIGKILL included) leaves either the old or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import errno
import glob
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from pylander.algorithms import canonical_name

FORMAT = "pylander-checkpoint"
VERSION = 1

TMP_SUFFIX = ".tmp"
""":func:`atomic_write` writes ``<name>`` via a temporary ``.<name>.<random><TMP_SUFFIX>``."""

_UMASK = os.umask(0)
os.umask(_UMASK)

ZIP_MAGIC = b"PK\x03\x04"
"""torch.save writes a zip archive; anything else is not a checkpoint of ours."""


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the run it is loaded into."""


def remove_stale_temporaries(directory: Path, names: list[str]) -> list[Path]:
    """Delete the temporaries that :func:`atomic_write` calls for ``directory/<name>`` left when
    they were killed mid-write (e.g. by SIGKILL); returns what was removed.

    Only call this while no other process writes those files.
    """
    removed = []
    for name in names:
        for tmp in Path(directory).glob(f".{glob.escape(name)}.*{TMP_SUFFIX}"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temporary file, then fsync and rename it onto ``path``.

    A failure to write (a full disk, ...) raises :class:`WriteError` naming ``path``, and leaves
    the old ``path`` as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_UMASK)  # mkstemp's 0600 -> the usual permissions
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        failure = _write_failure(exc, path)
        if failure is None:
            raise
        raise failure from exc
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


class WriteError(OSError):
    """A file could not be written: the disk is full, the directory went away, ... The message
    names the file; ``errno`` is the system's reason."""

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"


def _write_failure(exc: BaseException, path: Path) -> WriteError | None:
    """``exc`` as a :class:`WriteError` naming ``path`` if it is a failure to write, else None.

    torch.save reports a failed write (ENOSPC included) as a RuntimeError from its zip writer
    ("PytorchStreamWriter failed writing file ..."), not as the OSError underneath.
    """
    if isinstance(exc, WriteError):
        return exc
    if isinstance(exc, OSError):
        cause: BaseException | None = exc
    elif isinstance(exc, RuntimeError):
        cause = exc.__cause__ or exc.__context__
    else:
        return None
    if isinstance(cause, OSError):
        return WriteError(cause.errno, cause.strerror or str(cause), str(path))
    if "No space left" in str(exc):
        return WriteError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if "PytorchStreamWriter failed" in str(exc):
        return WriteError(errno.EIO, _first_line(exc), str(path))
    return None


def save_checkpoint(
    path: Path, *, env_id: str, architecture: dict, algorithm: dict, trainer: dict, config: dict
) -> None:
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "env_id": env_id,
        "architecture": architecture,
        "algorithm": algorithm,
        "trainer": trainer,
        "config": config,
    }
    atomic_write(path, lambda fh: torch.save(payload, fh))


def load_checkpoint(
    path: str | Path, *, env_id: str | None = None, architecture: dict | None = None
) -> dict:
    """Load and validate a checkpoint; raise :class:`CheckpointError` naming any problem.

    The file is checked before anything in it is unpickled: it must be a zip archive (what
    ``torch.save`` writes) whose members all pass their CRC check, which catches truncation and
    corruption, including flipped bits in the tensors' data. It is then loaded with
    ``weights_only=True``, which refuses any object other than tensors and plain data instead of
    running code from the file. ``env_id`` and ``architecture``, when given, must match what the
    checkpoint was trained on.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file, so not a checkpoint")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(len(ZIP_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not magic:
        raise CheckpointError(f"{path} is empty (0 bytes), not a checkpoint")
    if magic != ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a pylander checkpoint (not a torch.save zip "
            "archive); it was not unpickled"
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except Exception as exc:  # BadZipFile, EOFError, OSError, zlib.error, ...
        raise CheckpointError(f"{path} is truncated or corrupted: {_first_line(exc)}") from None
    if damaged is not None:
        raise CheckpointError(f"{path} is corrupted: its member {damaged!r} fails its CRC check")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4 in the checkpoint"
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" not in str(exc).lower():
            raise CheckpointError(f"{path} is corrupted: {_first_line(exc)}") from None
        raise CheckpointError(
            f"{path} holds objects other than tensors and plain data ({_unsafe_detail(exc)}), so "
            "it is not a pylander checkpoint; it was not loaded, because unpickling it could run "
            "code from the file"
        ) from None
    except Exception as exc:  # the unpickler raises KeyError, IndexError, RuntimeError, ...
        raise CheckpointError(
            f"{path} is corrupted or not a pylander checkpoint: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        ) from None
    validate_payload(payload, path)
    if env_id is not None and payload["env_id"] != env_id:
        raise CheckpointError(f"{path} was trained on {payload['env_id']}, not {env_id}")
    if architecture is not None and payload["architecture"] != architecture:
        theirs = payload["architecture"]
        diffs = [
            f"{key} {theirs.get(key)!r} in the checkpoint, {architecture.get(key)!r} here"
            for key in sorted(set(theirs) | set(architecture), key=str)
            if theirs.get(key) != architecture.get(key)
        ]
        raise CheckpointError(
            f"{path} holds a different network than this run builds: " + "; ".join(diffs)
        )
    return payload


_STRUCTURE = {
    "env_id": str,
    "architecture": dict,
    "algorithm": dict,
    "trainer": dict,
    "config": dict,
}


def validate_payload(payload: Any, path: Path) -> None:
    """Check the layout :func:`save_checkpoint` writes, so later code never meets a KeyError."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a torch file but not a pylander checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')!r}, "
            f"this pylander reads version {VERSION}"
        )
    for key, kind in _STRUCTURE.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(
                f"{path} is damaged: its {key!r} entry is missing or not a {kind.__name__}"
            )
    if not isinstance(payload["algorithm"].get("policy"), dict):
        raise CheckpointError(f"{path} is damaged: it holds no policy parameters")
    if not isinstance(payload["architecture"].get("algo"), str):
        raise CheckpointError(f"{path} is damaged: its architecture names no algorithm")
    # Checkpoints written under an algorithm's old name (``seed``) load as its current one.
    payload["architecture"]["algo"] = canonical_name(payload["architecture"]["algo"])
    trainer = payload["trainer"]
    if not isinstance(trainer.get("counters"), dict) or not isinstance(
        trainer.get("recent_returns"), list
    ):
        raise CheckpointError(f"{path} is damaged: its trainer state is incomplete")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _unsafe_detail(exc: BaseException) -> str:
    """The line of torch's message that names what was refused, e.g. 'Unsupported global: ...'."""
    for line in str(exc).splitlines():
        line = line.strip()
        if "unsupported" in line.lower() or "weightsunpickler error" in line.lower():
            return line.replace("WeightsUnpickler error: ", "")[:200]
    return "refused by torch.load(weights_only=True)"
