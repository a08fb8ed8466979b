"""The Python API: ``from pylander import TrainConfig, train, Agent``."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

import pylander
from pylander import Agent, TrainConfig, train
from pylander.rundir import RunDirectoryError

TINY = dict(
    env_id="CartPole-v1", num_envs=4, num_steps=32, total_steps=512, eval_episodes=2, quiet=True
)


def test_train_returns_summary_agent_run_dir_and_metrics(tmp_path):
    result = train(TrainConfig(**TINY, out=str(tmp_path / "run")))
    assert result.run_dir == tmp_path / "run"
    assert result.summary == json.loads((result.run_dir / "summary.json").read_text())
    assert [row["update"] for row in result.metrics] == [1.0, 2.0, 3.0, 4.0]
    assert isinstance(result.agent, Agent) and result.agent.checkpoint_path.name == "best.pt"
    obs = np.zeros(4, dtype=np.float32)
    assert result.agent.predict(obs) in (0, 1)
    assert result.agent.predict(np.zeros((3, 4))).shape == (3,)


def test_settings_as_keywords_and_the_notebook_defaults(tmp_path):
    result = train(
        algo="notebook",
        env_id="CartPole-v1",
        total_steps=60,
        eval_episodes=1,
        quiet=True,
        out=str(tmp_path / "nb"),
    )
    assert result.summary["algo"] == "notebook"
    assert TrainConfig.load(tmp_path / "nb" / "config.toml").gamma == 0.99


def test_the_cli_guards_hold_for_the_api(tmp_path):
    out = str(tmp_path / "run")
    first = train(TrainConfig(**TINY, out=out))
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        train(TrainConfig(**TINY, out=out))
    again = train(TrainConfig(**TINY, out=out, seed=2), force=True)
    assert again.summary["seed"] == 2 != first.summary["seed"]
    with pytest.raises(RunDirectoryError, match="finished"):
        train(TrainConfig(**TINY, out=out), resume=True)
    resumed = train(TrainConfig(**TINY, out=out), resume=True, total_steps=768)
    assert resumed.summary["steps"] == 768
    with pytest.raises(ValueError, match="unknown environment"):
        train(TrainConfig(**{**TINY, "env_id": "NoSuchEnv-v0"}, out=str(tmp_path / "x")))
    assert not (tmp_path / "x").exists()


def test_train_applies_torch_threads_and_restores_them(tmp_path):
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(
            TrainConfig(**TINY, out=str(tmp_path / "run"), torch_threads=1),
            callbacks=[lambda info: seen.append(torch.get_num_threads())],
        )
        assert set(seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_train_works_from_a_thread_and_a_callback_can_stop_it(tmp_path):
    box = {}

    def work():
        box["result"] = train(
            TrainConfig(**{**TINY, "total_steps": 100_000}, out=str(tmp_path / "run")),
            callbacks=[lambda info: info.update < 2],
        )

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive()
    summary = box["result"].summary
    assert summary["stop_reason"] == "callback" and summary["updates"] == 2


def test_pylander_train_is_callable_after_the_cli_module_is_imported(tmp_path):
    import pylander.train as cli

    assert pylander.train is cli and callable(cli.main)
    result = pylander.train(TrainConfig(**TINY, out=str(tmp_path / "run")))
    assert result.summary["steps"] == 512
