"""Two versions of the update, alternated iteration by iteration inside one training loop.

    python benchmarks/update_ab.py --compare kernels --iterations 40
    python benchmarks/update_ab.py --compare threads --rollout-workers 2 --iterations 40

``--algo reinforce`` with the default settings: each iteration is a rollout of 2,048 env steps
(in this process with ``--rollout-workers 0``, the default here, else in the workers) and an
update. Both versions run in one process, so both see the same machine and the same cache
pressure from the env steps in between. ``--compare``:

* ``kernels``: the update's native calls, ``actor_critic_forward``, ``actor_critic_grads`` and
  ``clip_grad_norms_``, through their composite kernels (ATen calls from C++, what CUDA runs and
  what the CPU ran before it had its own kernels) against their CPU kernels (the default on the
  CPU), on one torch thread;
* ``threads``: one torch thread against two (what ``--torch-threads 0`` picks on two free
  cores), which give the same numbers, so the run is the same run either way.

Prints the median iteration and update times of each and their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import time
from collections.abc import Callable

import torch

from pylander import ops
from pylander.algorithms import get_algorithm
from pylander.algorithms.reinforce import Reinforce
from pylander.bench.mlp import through_composite
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.threads import using_threads

FORWARD = torch.ops.pylander.actor_critic_forward.default
GRADS = torch.ops.pylander.actor_critic_grads.default
CLIP = torch.ops.pylander.clip_grad_norms_.default


composite_forward = functools.partial(through_composite, FORWARD)
composite_grads = functools.partial(through_composite, GRADS)


def composite_clip(grads, group_sizes, max_norm):
    return through_composite(CLIP, grads, list(group_sizes), float(max_norm))


@contextlib.contextmanager
def native_calls(forward: Callable, grads: Callable, clip: Callable):
    original = ops.actor_critic_forward, ops.actor_critic_grads, ops.clip_grad_norms_
    ops.actor_critic_forward, ops.actor_critic_grads, ops.clip_grad_norms_ = forward, grads, clip
    try:
        with using_threads(1):
            yield
    finally:
        ops.actor_critic_forward, ops.actor_critic_grads, ops.clip_grad_norms_ = original


COMPARISONS: dict[str, dict[str, Callable[[], contextlib.AbstractContextManager]]] = {
    "kernels": {
        "composite": lambda: native_calls(composite_forward, composite_grads, composite_clip),
        "cpu": lambda: native_calls(
            ops.actor_critic_forward, ops.actor_critic_grads, ops.clip_grad_norms_
        ),
    },
    "threads": {"1 thread": lambda: using_threads(1), "2 threads": lambda: using_threads(2)},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--compare", choices=list(COMPARISONS), default="kernels")
    parser.add_argument("--iterations", type=int, default=40, help="iterations per version")
    parser.add_argument("--rollout-workers", type=int, default=0, help="as for training")
    args = parser.parse_args()
    versions = COMPARISONS[args.compare]
    device = torch.device("cpu")
    config = TrainConfig(quiet=True, rollout_workers=args.rollout_workers)
    algorithm = get_algorithm("reinforce").build(config, device, Collective(device))
    algorithm.reset_envs(config.seed)
    update = Reinforce.update
    iterations: dict[str, list[float]] = {name: [] for name in versions}
    updates: dict[str, list[float]] = {name: [] for name in versions}
    try:
        for _ in range(3):  # warm-up
            algorithm.iterate(0.0)
        for _ in range(args.iterations):
            for name, version in versions.items():

                def timed_update(self, *a, _name=name):
                    started = time.perf_counter()
                    result = update(self, *a)
                    updates[_name].append(time.perf_counter() - started)
                    return result

                Reinforce.update = timed_update
                with version():
                    started = time.perf_counter()
                    algorithm.iterate(0.0)
                    iterations[name].append(time.perf_counter() - started)
    finally:
        Reinforce.update = update
        algorithm.close()
    median = {k: {n: statistics.median(v[n]) * 1e3 for n in versions} for k, v in
              (("iteration", iterations), ("update", updates))}  # fmt: skip
    for name in versions:
        print(f"{name:>10}: iteration {median['iteration'][name]:6.1f} ms, "
              f"update {median['update'][name]:5.1f} ms (medians of {args.iterations})")  # fmt: skip
    first, second = versions
    for what in ("iteration", "update"):
        print(f"{what} {first} / {second}: {median[what][first] / median[what][second]:.3f}")


if __name__ == "__main__":
    main()
