"""pylander: C++-accelerated policy-gradient training for gymnasium environments.

Importing the package loads the native operators (``torch.ops.pylander.*``) and registers their
fake kernels and autograd formulas; the typed Python entry points live in :mod:`pylander.ops`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from pathlib import Path

import torch


def _use_installed_native_module() -> None:
    """Let a source checkout on ``sys.path`` (``python -m pylander.train`` run inside it) find
    the compiled ``_C`` and ``_build_info`` of the installed copy, by adding the installed
    package's folder to this package's search path."""
    try:
        installed = Path(importlib.metadata.distribution("pylander").locate_file("pylander"))
    except importlib.metadata.PackageNotFoundError:
        installed = None
    if installed is None or not (installed / "_build_info.py").is_file():
        raise ImportError(
            f"pylander's native module is missing from {__path__[0]} and pylander is not "
            "installed: build and install it with `pip install --no-build-isolation .` "
            "(see README.md)"
        )
    __path__.append(str(installed))


if not (Path(__file__).parent / "_build_info.py").is_file():  # a source checkout
    _use_installed_native_module()

from pylander import _build_info  # noqa: E402

if torch.__version__ != _build_info.TORCH_VERSION:
    raise ImportError(
        f"pylander was built against torch {_build_info.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed; libtorch has no stable C++ ABI, so rebuild with "
        "`pip install --no-build-isolation --force-reinstall --no-deps .`"
    )

# After the version check: a mismatched module would crash instead of failing clearly.
from pylander import _C  # noqa: E402, I001  (loads the TORCH_LIBRARY registrations)
from pylander import ops  # noqa: E402  (fake kernels and autograd formulas)

__version__ = "0.1.0"
CUDA_KERNELS: bool = bool(_C.cuda_kernels)

# The Python API, imported on first use so that `import pylander` stays light.
_API = {
    "TrainConfig": "pylander.config",
    "train": "pylander.api",
    "TrainResult": "pylander.api",
    "Agent": "pylander.agent",
    "Callback": "pylander.hooks",
    "UpdateInfo": "pylander.hooks",
}


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'pylander' has no attribute {name!r}")


__all__ = ["ops", "CUDA_KERNELS", "__version__", *_API]
