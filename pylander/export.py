"""Export a trained policy to ONNX or TorchScript, and the ``python -m pylander.export`` CLI.

    python -m pylander.export runs/LunarLander-v3-reinforce-seed1 --output lander.onnx
    python -m pylander.export runs/.../best.pt --format torchscript --output lander.pt

The exported graph is :class:`GreedyPolicy`: it takes float32 observations ``obs [batch,
obs_size]`` (any batch size) and returns ``logits [batch, num_actions]`` (float32) and
``actions [batch]`` (int64), the argmax of the logits, which are exactly
``Agent.predict(obs)``'s greedy actions. The agent's observation transform, if it has one, is
part of the graph. Sampling is not exported (it is a native pylander operator); sample from the
logits if you want a stochastic policy. Both formats also carry the env id, algorithm and sizes
as metadata (ONNX ``metadata_props``; TorchScript extra file ``pylander.json``).

ONNX uses torch's default exporter, ``torch.onnx.export(dynamo=True)`` (built on torch.export;
the TorchScript-based one is deprecated since torch 2.9), which needs ``onnx`` and
``onnxscript``: ``pip install 'pylander[export]'``. The graph uses opset 18, the oldest that
exporter writes, for the widest runtime support, and keeps its weights in the one file.
Running the ``.onnx`` file needs only an ONNX runtime; no torch, no pylander. TorchScript
(``torch.jit.trace``; torch marks it deprecated, and unsupported on Python 3.14+) is for programs
that load models with libtorch or ``torch.jit.load``; it needs torch, not pylander.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from pylander.agent import Agent
from pylander.checkpoint import CheckpointError

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
"""Export formats and the suffix of their default output file."""
OPSET = 18
INPUT_NAME, OUTPUT_NAMES = "obs", ("logits", "actions")
INSTALL_HINT = "pip install 'pylander[export]'"


class ExportError(ValueError):
    """An export cannot be done as asked (bad format or output, missing exporter)."""


class GreedyPolicy(nn.Module):
    """The exported graph: ``obs -> (logits, argmax actions)``."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.policy(obs)
        return logits, logits.argmax(-1)


def export(agent: Agent, output: str | Path, format: str = "onnx") -> Path:
    """Write ``agent``'s greedy policy to ``output`` as ``format`` (onnx or torchscript).

    The file is written to a temporary name beside ``output`` and then renamed, so a failed
    export never leaves a partial file. Raises :class:`ExportError` for a bad ``format`` or
    ``output`` or a missing exporter. Returns the path written.
    """
    format = check_format(format)
    require_exporter(format)
    output = Path(output)
    check_output(output)
    graph = GreedyPolicy(_cpu_copy(agent.policy)).eval()
    example = torch.zeros(2, agent.obs_size)  # 2, not 1: a batch of 1 would be specialised
    metadata = {
        "env_id": agent.env_id,
        "algo": agent.algo,
        "obs_size": agent.obs_size,
        "num_actions": agent.num_actions,
        "inputs": INPUT_NAME,
        "outputs": ", ".join(OUTPUT_NAMES),
    }
    writer = _WRITERS[format]
    _write_atomically(output, lambda tmp: writer(graph, example, metadata, tmp))
    return output


def check_format(format: str) -> str:
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    return format


def require_exporter(format: str) -> None:
    """Raise :class:`ExportError` with the install command if ``format``'s exporter is missing."""
    if format != "onnx":
        return
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise ExportError(
                f"ONNX export needs the {module} package, which is not installed: {INSTALL_HINT}"
            ) from None


def check_output(output: Path) -> None:
    """Raise :class:`ExportError` unless ``output`` names a file in a writable folder."""
    folder = output.parent
    if output.is_dir():
        raise ExportError(f"--output {output} is a directory; give a file name")
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ExportError(f"--output folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ExportError(f"--output folder {folder} is not writable")


def describe(agent: Agent, output: Path, format: str) -> str:
    """One line saying what :func:`export` wrote."""
    kind = f"ONNX (opset {OPSET})" if format == "onnx" else "TorchScript"
    source = f" from {agent.checkpoint_path}" if agent.checkpoint_path else ""
    return (
        f"wrote {output}: {kind}, {INPUT_NAME} float32 [batch, {agent.obs_size}] -> "
        f"logits float32 [batch, {agent.num_actions}], actions int64 [batch] "
        f"({agent.env_id} {agent.algo} policy{source})"
    )


# --- writers ------------------------------------------------------------------------------------


def _write_onnx(graph: nn.Module, example: Tensor, metadata: dict, path: str) -> None:
    with _quiet_exporter():
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    program.model.metadata_props.update({f"pylander.{k}": str(v) for k, v in metadata.items()})
    program.save(path, external_data=False)


def _write_torchscript(graph: nn.Module, example: Tensor, metadata: dict, path: str) -> None:
    # Tracing records the ops, not the example's batch size: no op here reads a shape.
    # torch 2.13 marks TorchScript deprecated in favour of torch.export, but it is still what
    # libtorch (C++) programs load, so the warnings are not the user's business here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(graph, example)
        torch.jit.save(traced, path, _extra_files={"pylander.json": json.dumps(metadata)})


_WRITERS = {"onnx": _write_onnx, "torchscript": _write_torchscript}


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the ONNX exporter's warnings and log lines (e.g. about torchvision's missing ops)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _write_atomically(output: Path, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the model from other users
        os.replace(tmp, output)
    except OSError as exc:
        raise ExportError(f"cannot write {output}: {exc.strerror or exc}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _cpu_copy(policy: nn.Module) -> nn.Module:
    """The policy on the CPU, copied if it lives elsewhere, so exporting never moves the agent's."""
    on_cpu = all(t.device.type == "cpu" for t in [*policy.parameters(), *policy.buffers()])
    return policy if on_cpu else copy.deepcopy(policy).cpu()


# --- CLI ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pylander.export",
        description="Export a trained pylander policy to ONNX or TorchScript: float32 "
        "observations [batch, obs_size] in; logits and greedy actions out.",
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a checkpoint (.pt) or a run directory (its best.pt, else checkpoint.pt)",
    )
    parser.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    parser.add_argument(
        "--output",
        type=Path,
        help="file to write (default: beside the checkpoint, named after it, "
        f"ending {' or '.join(FORMATS.values())})",
    )
    args = parser.parse_args(argv)
    try:
        format = check_format(args.format)
        require_exporter(format)  # before the slower work, so a missing package fails fast
        agent = Agent.load(args.checkpoint)
        output = args.output or agent.checkpoint_path.with_suffix(FORMATS[format])
        if output.resolve() == agent.checkpoint_path.resolve():
            raise ExportError(f"--output {output} is the checkpoint itself; choose another file")
        export(agent, output, format)
    except (CheckpointError, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(agent, output, format))
    return 0


if __name__ == "__main__":
    sys.exit(main())
