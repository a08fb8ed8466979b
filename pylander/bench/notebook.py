"""The ``notebook`` section (formerly ``seed``): the notebook's own loop against ``--algo
notebook``, its exact reimplementation on the native ops.

One episode of the notebook's loop (:mod:`pylander.reference`: ``PolicyNetwork``,
``run_episode``, ``discount_rewards``, ``update``) runs between every two ``--algo notebook``
updates, which are one episode each too; both policies start untrained. The JSON keys keep the
section's old names, ``seed_notebook`` and ``seed_algo``, so that results stay comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pylander import reference
from pylander.bench.settings import Log, Settings
from pylander.bench.trainer import train_interleaved
from pylander.config import TrainConfig


def bench_notebook(settings: Settings, workdir: Path, log: Log) -> dict:
    """The notebook's loop, an episode after each ``--algo notebook`` update."""
    torch.manual_seed(12345)
    env = reference.make_env()
    env.reset(seed=12345)
    model = reference.PolicyNetwork((env.observation_space.shape[0], env.action_space.n))
    # The notebook draws from torch's global RNG, as --algo notebook does; keep them apart.
    notebook_rng = torch.get_rng_state()

    def notebook_episode() -> int:
        nonlocal notebook_rng
        algo_rng = torch.get_rng_state()
        torch.set_rng_state(notebook_rng)
        rewards, log_probs = reference.run_episode(model, env)
        reference.update(model, log_probs, reference.discount_rewards(rewards, reference.gamma))
        notebook_rng = torch.get_rng_state()
        torch.set_rng_state(algo_rng)
        return len(rewards)

    config = TrainConfig(
        algo="notebook", total_steps=settings.notebook_steps, quiet=True, eval_episodes=1
    )
    window, algo_rate, notebook_rate = train_interleaved(
        config, workdir / "notebook", notebook_episode, env.close
    )
    log(
        f"  notebook {notebook_rate:,.0f} steps/s, --algo notebook {algo_rate:,.0f} steps/s "
        f"over {len(window)} interleaved episodes"
    )
    return {
        "seed_notebook": {"steps_per_s": notebook_rate},
        "seed_algo": {
            "steps_per_s": algo_rate,
            "ratio_to_notebook": algo_rate / notebook_rate,
            "episodes": len(window),
        },
    }
