"""`--algo notebook` against the notebook transcribed in pylander.reference, from the same seed."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from pylander import ops, reference
from pylander.algorithms.notebook import NotebookReinforce
from pylander.checkpoint import load_checkpoint
from pylander.config import TrainConfig
from pylander.envs import check_spaces
from pylander.train import main as train_main
from pylander.trainer import env_seed

EPISODES = 5


def reference_parameters(seed: int, episodes: int) -> dict[str, torch.Tensor]:
    """The notebook's training loop, verbatim from the reference, seeded like the trainer."""
    torch.manual_seed(seed)
    env = reference.make_env()
    model = reference.PolicyNetwork((env.observation_space.shape[0], env.action_space.n))
    env.reset(seed=env_seed(seed, 0))
    for _ in range(episodes):
        rewards, log_probs = reference.run_episode(model, env)
        d_rewards = reference.discount_rewards(rewards, reference.gamma)
        reference.update(model, log_probs, d_rewards)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("seed", [0, 7, 11])
def test_notebook_algorithm_matches_notebook(seed):
    # Both sides run in the notebook's float32; they agree to ~1e-7.
    # The notebook's constants come with the algorithm, in Python as on the command line.
    config = TrainConfig(algo="notebook", seed=seed, quiet=True)
    assert (config.gamma, config.alpha, config.num_envs) == (0.99, 0.01, 1)
    torch.manual_seed(seed)
    env = reference.make_env()
    algo = NotebookReinforce(config, env, *check_spaces(env, config.env_id), torch.device("cpu"))
    algo.reset_envs(env_seed(seed, 0))
    steps = sum(algo.iterate(0.0).steps for _ in range(EPISODES))
    assert steps > 3 * EPISODES  # real episodes were played
    want = reference_parameters(seed, EPISODES)
    for name, value in algo.policy.state_dict().items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-5)
    # The parameters did move: the comparison is not between two untouched initialisations.
    torch.manual_seed(seed)
    untouched = reference.PolicyNetwork((8, 4)).state_dict()
    assert (untouched["w.weight"] - want["w.weight"]).abs().max() > 1e-3


def test_notebook_cli_matches_notebook(tmp_path):
    out = tmp_path / "run"
    code = train_main(
        [
            "--algo",
            "notebook",
            "--seed",
            "3",
            "--total-steps",
            "500",
            "--out",
            str(out),
            "--eval-episodes",
            "2",
            "--quiet",
        ]
    )
    assert code == 0
    payload = load_checkpoint(out / "checkpoint.pt")
    episodes = payload["trainer"]["counters"]["episodes"]
    assert episodes >= 3
    want = reference_parameters(3, episodes)
    for name, value in payload["algorithm"]["policy"].items():
        torch.testing.assert_close(value, want[name], rtol=0, atol=1e-5)


def test_old_name_seed_still_works_with_a_notice(tmp_path, capsys):
    out = tmp_path / "old"
    assert (
        train_main(
            [
                "--algo",
                "seed",
                "--total-steps",
                "50",
                "--out",
                str(out),
                "--eval-episodes",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert "--algo seed is now called --algo notebook" in capsys.readouterr().err
    assert TrainConfig.load(out / "config.toml").algo == "notebook"
    # A config file and a checkpoint written under the old name load as the notebook.
    (out / "config.toml").write_text(
        (out / "config.toml").read_text().replace('algo = "notebook"', 'algo = "seed"')
    )
    assert TrainConfig.load(out / "config.toml").algo == "notebook"


def test_notebook_mode_prints_the_notebook_progress_line(tmp_path, capsys):
    code = train_main(
        [
            "--algo",
            "notebook",
            "--total-steps",
            "50",
            "--out",
            str(tmp_path / "r"),
            "--eval-episodes",
            "1",
            "--no-quiet",
        ]
    )
    assert code == 0
    assert "Episode 0 finished with average reward" in capsys.readouterr().out


def test_notebook_act_draws_what_the_notebook_act_draws():
    """The native act against PolicyNetwork.act: the same actions and the same global RNG."""
    torch.manual_seed(0)
    model = reference.PolicyNetwork((8, 4))
    observations = (torch.randn(300, 8) * 2).numpy()
    torch.manual_seed(3)
    want = [model.act(o)[0] for o in observations]
    state_after = torch.get_rng_state()
    torch.manual_seed(3)
    got = [
        int(ops.notebook_act(torch.from_numpy(o), model.w.weight, model.w.bias))
        for o in observations
    ]
    assert got == want
    assert len(set(got)) == 4  # the draws were random, not one certain action
    assert torch.equal(torch.get_rng_state(), state_after)
    with pytest.raises(RuntimeError, match="do not fit an observation of shape"):
        ops.notebook_act(torch.zeros(5), model.w.weight, model.w.bias)


def test_notebook_act_opcheck():
    weight = torch.zeros(4, 8)
    bias = torch.tensor([0.0, 0.0, 80.0, 0.0])  # a certain action: eager and traced runs agree
    opcheck(torch.ops.pylander.notebook_act.default, (torch.randn(8), weight, bias))
