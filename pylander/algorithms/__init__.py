"""Training algorithms. Each exposes the same small interface to :mod:`pylander.trainer`:

* ``iterate() -> Iteration``: collect experience and make one update;
* ``logits(obs)``: the policy's action scores, for evaluation;
* ``reset_envs(seed)``: start fresh episodes (at start-up and at every checkpoint boundary);
* ``state_dict()`` / ``load_state_dict()``: everything a checkpoint must hold to resume;
* ``architecture()``: what a checkpoint must match to be loadable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter became NaN or infinite; the update was not applied."""


@dataclass
class Iteration:
    """What one update did."""

    steps: int
    episodes: list[tuple[float, int]] = field(default_factory=list)
    """(return, length) of the episodes that finished."""
    loss: float = float("nan")
    entropy: float = float("nan")


def check_parameters(module: torch.nn.Module, update: int) -> None:
    """Raise NonFiniteError if any parameter is NaN or infinite after ``update``."""
    params = dict(module.named_parameters())
    if bool(torch.isfinite(torch.cat([p.detach().reshape(-1) for p in params.values()])).all()):
        return  # one check for all (the common case); name the culprit only when there is one
    for name, param in params.items():
        if not torch.isfinite(param).all():
            raise NonFiniteError(f"parameter {name!r} became non-finite at update {update}")
