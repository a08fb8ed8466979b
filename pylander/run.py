"""One training run's state, shared by the trainer and its hooks: the algorithm, the counters,
the recent episodes, the best policy, checkpoints and evaluation."""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from typing import Any

import numpy as np
import torch

from pylander.algorithms import Algorithm, Iteration
from pylander.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import reward_threshold
from pylander.evaluate import evaluate
from pylander.hooks import UpdateInfo
from pylander.logger import Console


def env_seed(seed: int, update: int, rank: int = 0) -> int:
    """Seed for the episodes that start at ``update`` on ``rank``."""
    return int(np.random.SeedSequence([seed, update, rank]).generate_state(1)[0])


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` as a device with its index (``cuda:0``), so that tensors and
    generators made from it all name the same device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


class Run:
    """One training run's state, shared by the trainer and its hooks."""

    def __init__(
        self, config: TrainConfig, algorithm: Algorithm, comm: Collective, device: torch.device
    ):
        self.config, self.algorithm, self.comm, self.device = config, algorithm, comm, device
        self.out = config.resolved_out()
        self.threshold = reward_threshold(config.env_id)
        self.counters: dict[str, Any] = {
            "update": 0,
            "steps": 0,
            "episodes": 0,
            "seconds": 0.0,
            "best_mean": -math.inf,
            "best_eval": -math.inf,
            "next_eval_steps": 0,
        }
        self.recent: deque[float] = deque(maxlen=100)
        """Returns of the last 100 finished training episodes (all ranks)."""
        self.recent_lengths: deque[int] = deque(maxlen=100)
        self.console = Console(quiet=config.quiet, enabled=comm.is_main)
        self.best_policy: dict[str, torch.Tensor] | None = None
        """The parameters saved in ``best.pt`` (the policy the run returns), once there is one."""
        self.eval_returns: np.ndarray | None = None
        """The evaluation of the best policy on fresh episodes: the run's result, once known."""
        self.last_eval_returns: np.ndarray | None = None
        """The final policy's score on the same episodes."""
        self.stop_reason = "budget"
        self.summary: dict | None = None

    def message(self, text: str) -> None:
        self.console.message(text)

    def save(self, name: str) -> None:
        """Write the checkpoint ``name`` (``checkpoint.pt``, ``best.pt``) on the main process."""
        if self.comm.is_main:
            save_checkpoint(
                self.out / name,
                env_id=self.config.env_id,
                architecture=self.algorithm.architecture(),
                algorithm=self.algorithm.state_dict(),
                config=vars(self.config),
                trainer={
                    "counters": dict(self.counters),
                    "recent_returns": list(self.recent),
                    "recent_lengths": list(self.recent_lengths),
                    "best_policy": self.best_policy,
                },
            )

    def save_best(self) -> None:
        """Make the current policy the run's best: ``best.pt``, and what the run returns."""
        self.best_policy = {
            k: v.detach().clone() for k, v in self.algorithm.policy.state_dict().items()
        }
        self.save("best.pt")

    def load(self) -> None:
        """Restore the run from its ``checkpoint.pt`` (read by rank 0, sent to the others)."""
        path = self.out / "checkpoint.pt"
        payload = self.comm.on_main(
            lambda: load_checkpoint(
                path, env_id=self.config.env_id, architecture=self.algorithm.architecture()
            ),
            "rank 0 to load the checkpoint",
        )
        try:
            self.algorithm.load_state_dict(payload["algorithm"])
            self.counters.update(payload["trainer"]["counters"])
            self.recent.extend(float(r) for r in payload["trainer"]["recent_returns"])
            self.recent_lengths.extend(int(n) for n in payload["trainer"].get("recent_lengths", []))
            self.best_policy = payload["trainer"].get("best_policy")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"{path} does not fit this run ({type(exc).__name__}: {str(exc).strip()[:300]})"
            ) from None

    def reset_envs(self) -> None:
        """Fresh episodes from the seed of (run seed, update, rank): see PeriodicCheckpoint."""
        self.algorithm.reset_envs(
            env_seed(self.config.seed, self.counters["update"], self.comm.rank)
        )

    def evaluate(
        self,
        episodes: int | None = None,
        *,
        seed: int | None = None,
        num_envs: int = 16,
        policy: torch.nn.Module | None = None,
    ) -> np.ndarray:
        """Evaluate ``policy`` (the current one by default) on rank 0; every rank gets the returns.

        By default: ``eval_episodes`` episodes of the run's final-evaluation seed."""
        cfg = self.config
        return self.comm.on_main(
            lambda: evaluate(
                policy or self.algorithm.policy,
                cfg.env_id,
                episodes or cfg.eval_episodes,
                cfg.seed if seed is None else seed,
                stochastic=cfg.eval_stochastic,
                num_envs=num_envs,
                device=self.device,
                env_kwargs=cfg.env_kwargs,
            ),
            "rank 0 to evaluate",
        )

    def evaluate_result(self) -> None:
        """Score the best policy, and the final one, on the fresh final-evaluation episodes."""
        if self.best_policy is None:  # nothing chose one (a short run): the final policy
            self.save_best()
        best = copy.deepcopy(self.algorithm.policy)
        best.load_state_dict(self.best_policy)
        self.eval_returns = self.evaluate(policy=best)
        final = self.algorithm.policy.state_dict()
        same = all(torch.equal(final[k], v) for k, v in self.best_policy.items())
        self.last_eval_returns = self.eval_returns if same else self.evaluate()

    def record(self, iteration: Iteration, started: float) -> UpdateInfo:
        """Count an update (over all ranks) and make its row of metrics."""
        episodes = self.comm.gather(iteration.episodes)
        counters = self.counters
        counters["update"] += 1
        counters["steps"] += iteration.steps * self.comm.world_size
        counters["episodes"] += len(episodes)
        counters["seconds"] = time.perf_counter() - started
        self.recent.extend(r for r, _ in episodes)
        self.recent_lengths.extend(n for _, n in episodes)
        metrics: dict[str, Any] = {
            "update": counters["update"],
            "steps": counters["steps"],
            "episodes": counters["episodes"],
            "seconds": counters["seconds"],
            "mean_return": float(np.mean(self.recent)) if self.recent else math.nan,
            "episode_length": float(np.mean(self.recent_lengths))
            if self.recent_lengths
            else math.nan,
            **iteration.metrics,
            "steps_per_second": counters["steps"] / max(counters["seconds"], 1e-9),
        }
        return UpdateInfo(
            counters["update"],
            counters["steps"],
            counters["episodes"],
            counters["seconds"],
            metrics,
            self,
        )
