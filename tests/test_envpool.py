"""``--env-backend envpool``: the adapter keeps gymnasium's vector-env semantics (each check runs
on both backends, gymnasium's being the reference), training runs on it and repeats exactly,
and envpool's LunarLander scores like gymnasium's under the same fixed policies."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.envs.box2d.lunar_lander import heuristic
from gymnasium.wrappers.vector import RecordEpisodeStatistics

from pylander.config import TrainConfig
from pylander.envs import check_spaces, make_vector_env
from pylander.logger import WALL_CLOCK
from pylander.policies import ActorCritic
from pylander.rollout import RolloutCollector
from pylander.train import main as train_main

needs_envpool = pytest.mark.skipif(
    importlib.util.find_spec("envpool") is None,
    reason="envpool is not installed (pip install 'pylander[envpool]')",
)
BACKENDS = ["gymnasium", pytest.param("envpool", marks=needs_envpool)]


def read_metrics(path) -> list[dict]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k not in WALL_CLOCK} for row in csv.DictReader(fh)]


# --- the adapter: the same semantics as gymnasium's vector env --------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_after_an_episode_end_resets_with_reward_0_and_the_rollout_marks_it_invalid(backend):
    envs = make_vector_env("CartPole-v1", 4, backend=backend)
    torch.manual_seed(0)
    policy = ActorCritic(4, 2, [8], critic=False)
    collector = RolloutCollector(
        envs, policy, 64, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    collector.reset(seed=1)
    rollout = collector.collect()
    envs.close()
    done = rollout.terminated | rollout.truncated
    after_done = torch.zeros_like(done)
    after_done[1:] = done[:-1]
    assert done.sum() >= 8  # a random policy drops the pole within ~20 steps
    assert torch.equal(rollout.valid, ~after_done)
    assert (rollout.rewards[after_done] == 0).all() and (rollout.rewards[~after_done] == 1).all()
    assert not done[after_done].any()
    # The reset step returns a first observation: CartPole starts within +-0.05 of upright.
    assert (rollout.obs[1:][after_done].abs() <= 0.05).all()
    assert len(collector.pop_finished()) == done.sum()


@pytest.mark.parametrize("backend", BACKENDS)
def test_cartpole_time_limit_is_reported_as_truncated_not_terminated(backend):
    envs = make_vector_env("CartPole-v1", 3, backend=backend)
    obs, _ = envs.reset(seed=0)
    gains = np.array([0.1, 0.3, 1.0, 0.5])  # a linear controller that balances for 500 steps
    for step in range(1, 502):
        obs, reward, terminated, truncated, _ = envs.step((obs @ gains > 0).astype(np.int64))
        if step < 500:
            assert not (terminated | truncated).any(), step
        elif step == 500:
            assert truncated.all() and not terminated.any()
        else:  # the autoreset step
            assert (reward == 0).all() and not (terminated | truncated).any()
            assert (np.abs(obs) <= 0.05).all()
    envs.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_with_a_seed_restarts_the_same_episodes(backend):
    envs = make_vector_env("LunarLander-v3", 3, backend=backend)
    actions = np.array([0, 2, 3])
    first, _ = envs.reset(seed=7)
    stepped = envs.step(actions)[0]
    for _ in range(20):
        envs.step(actions)
    again, _ = envs.reset(seed=7)
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(envs.step(actions)[0], stepped)
    shifted, _ = envs.reset(seed=8)
    np.testing.assert_array_equal(shifted[:2], first[1:])  # env i starts from seed + i
    assert not np.array_equal(envs.reset()[0], first)  # no seed: the random streams go on
    envs.close()


@needs_envpool
@pytest.mark.parametrize("env_id", ["LunarLander-v3", "CartPole-v1", "Acrobot-v1"])
def test_envpool_envs_have_gymnasiums_spaces_and_stay_inside_them(env_id):
    reference = make_vector_env(env_id, 2)
    envs = make_vector_env(env_id, 2, backend="envpool")
    for name in [
        "single_observation_space",
        "single_action_space",
        "observation_space",
        "action_space",
    ]:
        assert getattr(envs, name) == getattr(reference, name), name
    assert check_spaces(envs, env_id) == check_spaces(reference, env_id)
    obs, _ = envs.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(50):
        assert obs.dtype == np.float32 and envs.observation_space.contains(obs)
        obs = envs.step(rng.integers(0, envs.single_action_space.n, 2))[0]
    envs.close()
    reference.close()


# --- configuration ----------------------------------------------------------------------------


def test_config_refuses_envpool_where_it_cannot_be_used(monkeypatch):
    TrainConfig(env_backend="gymnasium").validate()  # the default needs no envpool
    with pytest.raises(ValueError, match="the notebook steps one gymnasium env"):
        TrainConfig(algo="notebook", env_backend="envpool").validate()
    with pytest.raises(ValueError, match="env_backend envpool needs --vector sync"):
        TrainConfig(env_backend="envpool", vector="async").validate()
    with pytest.raises(ValueError, match="env_backend must be one of"):
        TrainConfig(env_backend="brax").validate()
    monkeypatch.setitem(sys.modules, "envpool", None)  # as if it were not installed
    with pytest.raises(ValueError, match=re.escape("pip install 'pylander[envpool]'")):
        TrainConfig(env_backend="envpool").validate()


@needs_envpool
def test_config_refuses_an_env_envpool_lacks():
    TrainConfig(env_id="CartPole-v1", env_backend="envpool").validate()
    message = "^envpool has no NoSuchEnv-v0; use --env-backend gymnasium$"
    with pytest.raises(ValueError, match=message):
        TrainConfig(env_id="NoSuchEnv-v0", env_backend="envpool").validate()


# --- training ---------------------------------------------------------------------------------

ENVPOOL_RUN = [
    "--env-backend",
    "envpool",
    "--num-envs",
    "4",
    "--num-steps",
    "16",
    "--checkpoint-interval",
    "4",
    "--eval-episodes",
    "2",
    "--quiet",
]


@needs_envpool
@pytest.mark.parametrize("env_id", ["CartPole-v1", "LunarLander-v3"])
def test_envpool_training_writes_its_outputs_and_repeats_exactly(tmp_path, env_id):
    runs = []
    for name in ["a", "b"]:
        out = tmp_path / name
        assert (
            train_main([*ENVPOOL_RUN, "--env", env_id, "--total-steps", "1024", "--out", str(out)])
            == 0
        )
        runs.append(read_metrics(out / "metrics.csv"))
    for name in ["config.toml", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"]:
        assert (out / name).is_file(), name
    assert TrainConfig.load(out / "config.toml").env_backend == "envpool"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["env"] == env_id and summary["steps"] == 1024 and summary["episodes"] > 0
    assert len(runs[0]) == 16 and runs[0] == runs[1]


@needs_envpool
def test_resumed_envpool_run_matches_the_uninterrupted_one(tmp_path):
    # Exact only because reset(seed=...) at each checkpoint makes a pool from that seed:
    # envpool's own reset ignores seeds. (Annealing depends on total_steps, hence off.)
    args = [*ENVPOOL_RUN, "--env", "CartPole-v1", "--no-anneal-lr", "--seed", "3"]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert train_main([*args, "--total-steps", "1024", "--out", str(whole)]) == 0
    assert train_main([*args, "--total-steps", "512", "--out", str(halves)]) == 0
    assert train_main(["--resume", str(halves), "--total-steps", "1024"]) == 0
    assert read_metrics(halves / "metrics.csv") == read_metrics(whole / "metrics.csv")


# --- envpool's LunarLander against gymnasium's ------------------------------------------------

EPISODES = 150


def episode_returns(backend: str, policy: str) -> np.ndarray:
    """Returns of the first EPISODES episodes that 16 envs finish under ``policy`` (seed 0)."""
    envs = RecordEpisodeStatistics(
        make_vector_env("LunarLander-v3", 16, backend=backend), buffer_length=EPISODES + 16
    )
    lander = gym.make("LunarLander-v3")  # the heuristic reads only its discrete/continuous flag
    rng = np.random.default_rng(0)
    obs, _ = envs.reset(seed=0)
    while len(envs.return_queue) < EPISODES:
        if policy == "heuristic":
            actions = np.array([heuristic(lander, s) for s in obs])
        else:
            actions = rng.integers(0, 4, 16)
        obs = envs.step(actions)[0]
    envs.close()
    return np.array(envs.return_queue)[:EPISODES]


@needs_envpool
@pytest.mark.parametrize("policy", ["heuristic", "random"])
def test_envpool_lunarlander_mean_return_is_within_3_standard_errors_of_gymnasiums(policy):
    # The heuristic lands (mean about 250): legs, contact and landing rewards. Random actions
    # crash (about -180), as an untrained policy does. Fixed seeds: the test is deterministic.
    ours, theirs = episode_returns("envpool", policy), episode_returns("gymnasium", policy)
    standard_error = np.sqrt(ours.var(ddof=1) / EPISODES + theirs.var(ddof=1) / EPISODES)
    difference = ours.mean() - theirs.mean()
    assert abs(difference) < 3 * standard_error, (
        f"envpool {ours.mean():.1f} vs gymnasium {theirs.mean():.1f} over {EPISODES} episodes "
        f"(standard error of the difference {standard_error:.1f})"
    )
