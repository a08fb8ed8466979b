"""The Agent API: loading a trained policy, predict's inputs and outputs, evaluate."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

from pylander.agent import Agent
from pylander.checkpoint import CheckpointError, load_checkpoint
from pylander.evaluate import evaluate, policy_from_checkpoint
from pylander.policies import ActorCritic


@pytest.fixture(scope="module")
def agent(run_dir):
    return Agent.load(run_dir)


def test_load_a_run_directory_prefers_best(run_dir, agent):
    assert agent.checkpoint_path == run_dir / "best.pt"
    assert (agent.env_id, agent.algo, agent.obs_size, agent.num_actions) == (
        "CartPole-v1",
        "reinforce",
        4,
        2,
    )


def test_load_falls_back_to_checkpoint_pt_and_loads_files(run_dir, tmp_path, observations):
    shutil.copy(run_dir / "checkpoint.pt", tmp_path / "checkpoint.pt")
    from_dir = Agent.load(tmp_path)
    assert from_dir.checkpoint_path == tmp_path / "checkpoint.pt"
    from_file = Agent.load(run_dir / "checkpoint.pt")
    assert np.array_equal(from_dir.predict(observations), from_file.predict(observations))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="neither best.pt nor checkpoint.pt"):
        Agent.load(tmp_path)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        Agent.load(tmp_path / "missing.pt")


def test_greedy_predict_is_the_argmax_of_the_checkpoint_policy(agent, observations):
    logits_fn, _ = policy_from_checkpoint(load_checkpoint(agent.checkpoint_path))
    with torch.no_grad():
        expected = logits_fn(torch.from_numpy(observations)).argmax(-1).numpy()
    actions = agent.predict(observations)
    assert actions.dtype == np.int64 and actions.shape == (len(observations),)
    assert np.array_equal(actions, expected)
    assert len(set(expected.tolist())) == 2, "a constant policy would make this test weak"


CONVERSIONS = {
    "numpy32": lambda x: x,
    "numpy64": lambda x: x.astype(np.float64),
    "tensor": torch.from_numpy,
    "tensor16": lambda x: torch.from_numpy(x).half(),
    "int": lambda x: np.round(x * 10).astype(np.int32),
    "list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("convert", CONVERSIONS.values(), ids=CONVERSIONS.keys())
def test_predict_takes_one_observation_or_a_batch_of_any_kind(agent, observations, convert):
    batch = convert(observations[:16])
    with torch.no_grad():  # the policy on the same values, as float32
        expected = agent.policy(torch.as_tensor(batch).float()).argmax(-1).numpy()
    got = agent.predict(batch)
    assert isinstance(got, np.ndarray) and np.array_equal(got, expected)
    single = agent.predict(batch[3])
    assert type(single) is int and single == expected[3]


def test_predict_an_empty_batch(agent):
    assert agent.predict(np.zeros((0, 4))).shape == (0,)


def test_stochastic_predict_is_reproducible_from_its_seed(run_dir, observations):
    first = Agent.load(run_dir, seed=7).predict(observations, deterministic=False)
    second = Agent.load(run_dir, seed=7)
    assert np.array_equal(second.predict(observations, deterministic=False), first)
    assert not np.array_equal(second.predict(observations, deterministic=False), first)
    second.seed(7)
    assert np.array_equal(second.predict(observations, deterministic=False), first)
    # A barely trained policy is far from greedy, so sampling must differ from the argmax.
    assert not np.array_equal(first, second.predict(observations))
    assert set(first.tolist()) <= {0, 1}


@pytest.mark.parametrize(
    "obs, message",
    [
        (np.zeros(5), r"shape \[4\] or \[batch, 4\] for CartPole-v1, got \[5\]"),
        (np.zeros((2, 3)), r"got \[2, 3\]"),
        (np.zeros((2, 2, 4)), r"got \[2, 2, 4\]"),
        (np.zeros(()), r"got \[\]"),
        ([0.0, np.nan, 0.0, 0.0], "NaN or infinite"),
        (torch.tensor([[0.0, 0.0, float("inf"), 0.0]]), "NaN or infinite"),
        ([[1.0, 2.0], [3.0]], "array of numbers"),
        ("abcd", "real numbers"),
        (np.zeros(4, dtype=bool), "real numbers"),
        (torch.zeros(4, dtype=torch.complex64), "real numbers"),
    ],
    ids=["size", "batch-size", "3d", "scalar", "nan", "inf", "ragged", "str", "bool", "complex"],
)
def test_bad_observations_get_one_clear_error(agent, obs, message):
    for deterministic in (True, False):
        with pytest.raises(ValueError, match=message) as info:
            agent.predict(obs, deterministic=deterministic)
        assert "\n" not in str(info.value)


def test_evaluate_plays_the_episodes_asked_for(agent):
    returns = agent.evaluate(episodes=3, seed=5)
    assert returns.shape == (3,) and (returns >= 1).all()
    logits_fn, env_id = policy_from_checkpoint(load_checkpoint(agent.checkpoint_path))
    assert np.array_equal(returns, evaluate(logits_fn, env_id, 3, 5))
    with pytest.raises(ValueError, match="episodes must be a positive integer"):
        agent.evaluate(episodes=0)


class Shift(nn.Module):
    """A stand-in for an observation normaliser."""

    def __init__(self, offset: torch.Tensor):
        super().__init__()
        self.register_buffer("offset", offset)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return obs - self.offset


def test_an_in_memory_policy_with_an_observation_transform(observations):
    torch.manual_seed(0)
    net = ActorCritic(4, 2, [8], critic=False)
    transform = Shift(torch.tensor([0.0, 0.0, 0.05, 0.0]))
    agent = Agent(net.logits, "CartPole-v1", obs_transform=transform, seed=1)
    assert (agent.obs_size, agent.num_actions, agent.checkpoint_path) == (4, 2, None)
    with torch.no_grad():
        expected = net.logits(transform(torch.from_numpy(observations))).argmax(-1).numpy()
        untransformed = net.logits(torch.from_numpy(observations)).argmax(-1).numpy()
    assert np.array_equal(agent.predict(observations), expected)
    assert not np.array_equal(expected, untransformed), "the transform must change something"
    assert agent.evaluate(episodes=2).shape == (2,)


def test_the_policy_must_be_a_module_or_a_method_of_one():
    with pytest.raises(TypeError, match="nn.Module or a method of one"):
        Agent(lambda obs: obs, "CartPole-v1", obs_size=4, num_actions=2)
