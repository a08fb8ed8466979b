"""The update's CPU kernels against its composite kernels, inside a one-core training loop.

    python benchmarks/kernel_ab.py --iterations 40

``--algo reinforce`` with the default settings and ``--rollout-workers 0``: each iteration is a
rollout of 2,048 env steps and an update. Iterations alternate between two versions of the
update's two native calls, in one process, so both see the same machine and the same cache
pressure from the env steps in between:

* ``composite``: ``actor_critic_grads`` and ``clip_grad_norms_`` through their composite kernels
  (ATen calls from C++, what CUDA runs and what the CPU ran before it had its own kernels);
* ``cpu``: the same ops through their CPU kernels (the default on the CPU).

Prints the median iteration and update times of each and their ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pylander import ops
from pylander.algorithms import get_algorithm
from pylander.algorithms.reinforce import Reinforce
from pylander.bench.mlp import COMPOSITE
from pylander.config import TrainConfig
from pylander.distributed import Collective

GRADS = torch.ops.pylander.actor_critic_grads.default
CLIP = torch.ops.pylander.clip_grad_norms_.default


def composite_grads(*args):
    with torch.no_grad():
        return GRADS.redispatch(COMPOSITE, *args)


def composite_clip(grads, group_sizes, max_norm):
    with torch.no_grad():
        return CLIP.redispatch(COMPOSITE, grads, list(group_sizes), float(max_norm))


VERSIONS = {
    "composite": (composite_grads, composite_clip),
    "cpu": (ops.actor_critic_grads, ops.clip_grad_norms_),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=40, help="iterations per version")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    config = TrainConfig(quiet=True, rollout_workers=0)
    algorithm = get_algorithm("reinforce").build(config, device, Collective(device))
    algorithm.reset_envs(config.seed)
    original = {name: getattr(ops, name) for name in ("actor_critic_grads", "clip_grad_norms_")}
    update = Reinforce.update
    iterations: dict[str, list[float]] = {name: [] for name in VERSIONS}
    updates: dict[str, list[float]] = {name: [] for name in VERSIONS}
    try:
        for _ in range(3):  # warm-up
            algorithm.iterate(0.0)
        for _ in range(args.iterations):
            for name, (grads, clip) in VERSIONS.items():
                ops.actor_critic_grads, ops.clip_grad_norms_ = grads, clip

                def timed_update(self, *a, _name=name):
                    started = time.perf_counter()
                    result = update(self, *a)
                    updates[_name].append(time.perf_counter() - started)
                    return result

                Reinforce.update = timed_update
                started = time.perf_counter()
                algorithm.iterate(0.0)
                iterations[name].append(time.perf_counter() - started)
    finally:
        Reinforce.update = update
        for name, fn in original.items():
            setattr(ops, name, fn)
        algorithm.close()
    median = {k: {n: statistics.median(v[n]) * 1e3 for n in VERSIONS} for k, v in
              (("iteration", iterations), ("update", updates))}  # fmt: skip
    for name in VERSIONS:
        print(f"{name:>9}: iteration {median['iteration'][name]:6.1f} ms, "
              f"update {median['update'][name]:5.1f} ms (medians of {args.iterations})")  # fmt: skip
    for what in ("iteration", "update"):
        ratio = median[what]["composite"] / median[what]["cpu"]
        print(f"{what} composite / cpu: {ratio:.3f}")


if __name__ == "__main__":
    main()
