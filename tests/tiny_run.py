"""A tiny real training run, shared by the tests of the Agent API and of export."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np

from pylander.config import TrainConfig
from pylander.trainer import train


def train_tiny_run(out: Path) -> Path:
    """Train CartPole-v1 for 4 updates (seconds); the run directory gets best.pt, checkpoint.pt.

    With observation normalisation, so that every check of predict and export covers it."""
    train(
        TrainConfig(
            env_id="CartPole-v1",
            total_steps=1024,
            num_envs=4,
            num_steps=64,
            eval_episodes=1,
            normalize_obs=True,
            out=str(out),
            quiet=True,
        )
    )
    return out


def env_observations(env_id: str = "CartPole-v1", count: int = 64, seed: int = 0) -> np.ndarray:
    """``count`` real observations [count, obs_size] (float32) from random play in ``env_id``."""
    env = gym.make(env_id)
    env.action_space.seed(seed)
    observations = []
    try:
        obs, _ = env.reset(seed=seed)
        while len(observations) < count:
            observations.append(obs)
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                obs, _ = env.reset()
    finally:
        env.close()
    return np.asarray(observations, dtype=np.float32)
