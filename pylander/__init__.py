"""pylander: C++-accelerated policy-gradient training for gymnasium environments.

Importing the package loads the native operators (``torch.ops.pylander.*``) and registers their
fake kernels and autograd formulas; the typed Python entry points live in :mod:`pylander.ops`.
"""

from __future__ import annotations

import torch

try:
    from pylander import _build_info
except ImportError as exc:  # running from a source tree that was never built
    raise ImportError(
        f"pylander's native module is missing from {__path__[0]}. If that is a source checkout, "
        "install the package (`pip install --no-build-isolation .`, see README.md) and run from "
        "another directory, or run the tests with `pytest` rather than `python -m pytest`, "
        "which puts the checkout ahead of the installed package."
    ) from exc

if torch.__version__ != _build_info.TORCH_VERSION:
    raise ImportError(
        f"pylander was built against torch {_build_info.TORCH_VERSION} but torch "
        f"{torch.__version__} is installed; libtorch has no stable C++ ABI, so rebuild with "
        "`pip install --no-build-isolation --force-reinstall --no-deps .`"
    )

from pylander import _C  # noqa: E402  (loads the TORCH_LIBRARY registrations)
from pylander import ops  # noqa: E402  (fake kernels and autograd formulas)

__version__ = "0.1.0"
CUDA_KERNELS: bool = bool(_C.cuda_kernels)

__all__ = ["ops", "CUDA_KERNELS", "__version__"]
