"""Training algorithms behind one interface, and the registry that names them.

Adding an algorithm takes one module with a class that satisfies :class:`Algorithm` and one line
in :data:`REGISTRY`. The trainer, evaluation and the Python API reach every algorithm through
:func:`get_algorithm` alone, so none of them names an algorithm.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite; the update was not applied."""


@dataclass
class Iteration:
    """What one update did."""

    steps: int
    """Env steps this process took (reset steps included)."""
    episodes: list[tuple[float, int]] = field(default_factory=list)
    """(return, length) of the episodes that finished."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Free-form statistics of the update (``policy_loss``, ``entropy``, ...): every key reaches
    ``metrics.csv`` and TensorBoard as it is."""


class Algorithm(Protocol):
    """What the trainer needs of an algorithm."""

    name: ClassVar[str]
    policy: nn.Module
    """The trained policy: ``policy(obs)`` gives action logits ``[B, num_actions]``."""

    @classmethod
    def build(cls, config: Any, device: torch.device, comm: Any) -> Algorithm:
        """Make the algorithm and its env(s) from a :class:`~pylander.config.TrainConfig`."""
        ...

    @staticmethod
    def policy_from_state(architecture: dict, state: dict) -> nn.Module:
        """Rebuild the policy a checkpoint holds (``architecture()`` and ``state_dict()``)."""
        ...

    def iterate(self, progress: float) -> Iteration:
        """Collect experience and make one update; ``progress`` in [0, 1] is the budget used."""
        ...

    def reset_envs(self, seed: int) -> None:
        """Start fresh episodes (at start-up and at every checkpoint boundary)."""
        ...

    def architecture(self) -> dict:
        """What a checkpoint must match to be loaded (its ``"algo"`` key names the algorithm)."""
        ...

    def state_dict(self) -> dict:
        """Everything a checkpoint must hold to resume exactly; ``state["policy"]`` is the
        policy's ``state_dict``."""
        ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None:
        """Close the env(s)."""
        ...


@dataclass(frozen=True)
class Entry:
    target: str
    """``module:Class`` of the algorithm, imported only when it is used."""
    defaults: dict[str, Any] = field(default_factory=dict)
    """Settings this algorithm uses unless they are given (see ``TrainConfig``)."""
    single_process: bool = False
    """It cannot train data-parallel (``--procs``/torchrun refuse it before starting)."""


REGISTRY: dict[str, Entry] = {
    "reinforce": Entry("pylander.algorithms.reinforce:Reinforce"),
    # The notebook's constants (its lr 1e-3 is fixed inside its PolicyNetwork).
    "notebook": Entry(
        "pylander.algorithms.notebook:NotebookReinforce",
        {"gamma": 0.99, "alpha": 0.01, "num_envs": 1, "rollout_workers": 0},
        single_process=True,
    ),
}

ALIASES = {"seed": "notebook"}
"""Old names still accepted (configs and checkpoints written with them load)."""


def canonical_name(name: str) -> str:
    """The registry name for ``name`` (an alias maps to its algorithm); unknown names pass."""
    return ALIASES.get(name, name)


def get_algorithm(name: str) -> type[Algorithm]:
    """The algorithm class registered as ``name`` (or an alias of it)."""
    try:
        entry = REGISTRY[canonical_name(name)]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(REGISTRY)}") from None
    module, _, cls = entry.target.partition(":")
    return getattr(importlib.import_module(module), cls)


def check_parameters(module: nn.Module, update: int) -> None:
    """Raise NonFiniteError if any parameter is NaN or infinite after ``update``."""
    params = dict(module.named_parameters())
    if bool(torch.isfinite(torch.cat([p.detach().reshape(-1) for p in params.values()])).all()):
        return  # one check for all (the common case); name the culprit only when there is one
    for name, param in params.items():
        if not torch.isfinite(param).all():
            raise NonFiniteError(f"parameter {name!r} became non-finite at update {update}")


def tensor_metrics(values: dict[str, Tensor | float]) -> dict[str, float]:
    """Floats from a dict of scalar tensors, with one host sync for all of them."""
    keys = list(values)
    floats = torch.stack(
        [torch.as_tensor(values[k], dtype=torch.float64).reshape(()).to("cpu") for k in keys]
    ).tolist()
    return dict(zip(keys, floats))
