"""``python -m pylander.tune`` on CartPole with tiny budgets: the study lives in SQLite and
resumes, trials run in worker processes, pruning stops a run, a failing trial does not stop the
search, the best settings load and train, and bad input is a usage error."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from pylander import search as tune_search  # noqa: E402
from pylander import tune  # noqa: E402
from pylander.config import TrainConfig  # noqa: E402
from pylander.trainer import train  # noqa: E402

BASE = TrainConfig(
    env_id="CartPole-v1",
    num_envs=4,
    num_steps=32,
    eval_episodes=1,
    checkpoint_interval=1000,
    log_interval=1000,
)
# Where the trainer evaluates periodically, evaluate twice per trial (not every update).
EVAL = ["--eval-interval", "256"]


def flags(tmp_path: Path, out: Path, *more: str) -> list[str]:
    base = tmp_path / "base.toml"
    base.write_text(BASE.to_toml())
    return [
        "--config",
        str(base),
        "--params",
        "learning_rate,gae_lambda",
        "--trial-steps",
        "512",
        "--seeds",
        "1",
        *EVAL,
        "--out",
        str(out),
        *more,
    ]


def load(out: Path):
    return optuna.load_study(study_name=tune_search.STUDY_NAME, storage=f"sqlite:///{out}/study.db")


def test_search_resumes_in_processes_and_its_best_config_trains(tmp_path, capsys):
    out = tmp_path / "search"
    assert tune.main(flags(tmp_path, out, "--trials", "2")) == 0
    first = {t.number: t.value for t in load(out).trials}
    assert len(first) == 2 and all(v is not None for v in first.values())
    assert (out / "trials" / "0" / "seed1" / "summary.json").is_file()
    stale = load(out).ask()  # what a search killed mid-trial leaves behind: a RUNNING trial

    assert tune.main(flags(tmp_path, out, "--trials", "4", "--jobs", "2")) == 0
    trials = load(out).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1
    assert trials[stale.number].state == TrialState.FAIL
    assert {t.number: t.value for t in trials if t.number in first} == first  # kept as they were
    assert f"trial {stale.number} was left running" in capsys.readouterr().err

    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    config = TrainConfig.load(out / "best.toml")
    assert config.learning_rate == best.params["learning_rate"]
    assert config.gae_lambda == best.params["gae_lambda"]
    assert (config.out, config.total_steps, config.env_id) == ("", BASE.total_steps, "CartPole-v1")
    summary = train(
        dataclasses.replace(config, total_steps=128, out=str(tmp_path / "best"), quiet=True)
    )
    assert summary["steps"] >= 128


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def search(tmp_path: Path, base: TrainConfig = BASE, steps: int = 1024) -> tune_search.Search:
    return tune_search.Search(
        base,
        ["learning_rate"],
        steps,
        2,
        tmp_path,
        eval_interval=256,
    )


def test_a_pruned_trial_stops_training_at_its_first_report(tmp_path):
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    study.optimize(tune_search.Objective(search(tmp_path)), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.PRUNED
    # Reported at the fixed points the first update (128 steps) passed, then stopped.
    assert list(trial.intermediate_values) == [51, 102]
    summary = json.loads((tmp_path / "trials" / "0" / "seed1" / "summary.json").read_text())
    assert (summary["stop_reason"], summary["steps"]) == ("pruned", 128)
    assert not (tmp_path / "trials" / "0" / "seed2").exists()  # the second seed never ran


def test_a_trial_whose_training_fails_is_recorded_as_failed(tmp_path):
    broken = dataclasses.replace(BASE, minibatches=10_000)  # rejected by TrainConfig.validate
    tune.run_trials(search(tmp_path, broken), 2)
    assert [t.state for t in load(tmp_path).trials] == [TrialState.FAIL] * 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--trials", "0"], "--trials must be positive, got 0"),
        (["--jobs", "-1"], "--jobs must be positive, got -1"),
        (["--seeds", "0"], "--seeds must be positive"),
        (
            ["--trial-steps", "100"],
            "--trial-steps 100 is smaller than one rollout (4 envs x 32 steps",
        ),
        (["--params", "learning_rate,lr"], "--params: unknown or repeated names ['lr']"),
        (["--env", "NoSuchEnv-v0"], "--env: unknown environment 'NoSuchEnv-v0'"),
        (["--unsolved-penalty", "-1"], "--unsolved-penalty must be >= 0"),
    ],
)
def test_bad_input_is_a_usage_error_and_writes_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "search"
    with pytest.raises(SystemExit) as info:
        tune.main([*flags(tmp_path, out), *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "python -m pylander.tune: error: " in err and message in err, err
    assert "Traceback" not in err and not out.exists()


def test_the_trial_steps_check_counts_the_largest_rollout_the_search_can_choose(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tune.main([*flags(tmp_path, tmp_path / "s"), "--params", "num_envs,num_steps"])
    assert "(32 envs x 256 steps = 8192" in capsys.readouterr().err


def test_the_default_space_follows_the_config_fields():
    space = tune.default_space()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert ("clip_coef" in space) == ("clip_coef" in fields)
    assert ("normalize_obs" in space) == ("normalize_obs" in fields)
    config = tune.apply_params(BASE, {"hidden_width": 128, "learning_rate": 1e-3})
    assert config.hidden_sizes == [128, 128] and config.learning_rate == 1e-3
