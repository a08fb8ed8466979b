"""Torch threads: what ``--torch-threads 0`` picks, and that the number changes no result.

The update's kernel runs the actor and the critic on two threads where torch has two; the
network's init runs on one. So one thread or two must give the same bits, op by op and run by run.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from pylander import TrainConfig, _build_info, ops, threads, train
from pylander.checkpoint import load_checkpoint
from pylander.threads import training_threads, using_threads


@pytest.mark.parametrize(
    "settings,processes,cores,omp,expected",
    [
        ({"torch_threads": 3}, 1, 2, "", 3),  # given: as given
        ({}, 1, 2, "", 2),  # two free cores
        ({}, 1, 16, "", 2),  # never more than the kernel's two networks
        ({}, 1, 1, "", 1),  # taskset -c 0
        ({"collect_ahead": True}, 1, 2, "", 1),  # the workers step envs during the update
        ({"algo": "notebook"}, 1, 2, "", 1),
        ({}, 2, 2, "", 1),  # two trainings share the two cores
        ({}, 2, 8, "", 2),
        ({}, 1, 2, "1", 1),  # torchrun / --procs with several ranks
        ({}, 1, 2, "four", 2),  # not a number: ignored, as torch ignores it
    ],
)
def test_training_threads(monkeypatch, settings, processes, cores, omp, expected):
    monkeypatch.setattr(threads, "available_cores", lambda: cores)
    monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert training_threads(TrainConfig(**settings), processes) == expected


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork on this platform")
def test_a_forked_process_takes_one_thread(monkeypatch):
    """In a fork of a process whose OpenMP pool has run, torch hangs at its first parallel region
    on several threads; a forked trainer (a rank forked by a test) must keep to one."""
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert training_threads(TrainConfig()) == 2
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports what it would take, then leaves without pytest's teardown
        os.write(writer, str(training_threads(TrainConfig())).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(pid, 0)
    assert os.read(reader, 8) == b"1"
    os.close(reader)


def test_negative_threads_are_a_clear_error():
    with pytest.raises(ValueError, match="torch_threads must be >= 0"):
        TrainConfig(torch_threads=-1).validate()


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the OpenMP check is for Linux builds with gcc"
)
def test_the_kernels_are_built_with_openmp_when_torch_uses_it():
    # Without -fopenmp, ATen's parallel_for compiles to a plain loop: every kernel ran on one
    # thread whatever torch.set_num_threads said (found in the sixth session).
    assert torch.backends.openmp.is_available() == _build_info.OPENMP


def _mlp(sizes: list[int], generator: torch.Generator) -> list[torch.Tensor]:
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params += [torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5]
        params += [torch.randn(fan_out, generator=generator) * 0.1]
    return params


@pytest.mark.parametrize("rows", [7, 256, 600])
@pytest.mark.parametrize("with_critic", [True, False])
def test_actor_critic_grads_are_the_same_on_one_and_two_threads(rows, with_critic):
    g = torch.Generator().manual_seed(rows)
    actor, critic = _mlp([8, 64, 64, 4], g), _mlp([8, 64, 64, 1], g) if with_critic else []
    args = (
        torch.randn(rows, 8, generator=g),
        actor,
        critic,
        torch.randint(0, 4, (rows,), generator=g),
        torch.randn(rows, generator=g),
        torch.log_softmax(torch.randn(rows, 4, generator=g), -1),
        torch.randn(rows, generator=g),
        0.2,
        0.01,
        0.5,
        1.0 / rows,
    )
    results = []
    for n in (1, 2):
        with using_threads(n):
            actor_grads, critic_grads, stats = ops.actor_critic_grads(*args)
        results.append([*actor_grads, *critic_grads, stats])
    assert len(results[0]) == (13 if with_critic else 7)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("rows", [7, 600])
def test_actor_critic_forward_is_the_same_on_one_and_two_threads(rows):
    g = torch.Generator().manual_seed(rows)
    args = (torch.randn(rows, 8, generator=g), _mlp([8, 64, 64, 4], g), _mlp([8, 64, 64, 1], g))
    results = []
    for n in (1, 2):
        with using_threads(n):
            results.append(ops.actor_critic_forward(*args))
    assert results[0][0].shape == (rows, 4) and results[0][1].shape == (rows,)
    for one, two in zip(*results):
        assert torch.equal(one, two)


def test_a_run_is_the_same_on_one_and_two_threads(tmp_path):
    settings = dict(
        env_id="LunarLander-v3",
        num_envs=4,
        num_steps=64,
        total_steps=768,
        rollout_workers=0,
        eval_episodes=2,
        eval_interval=512,
        quiet=True,
    )
    runs = [
        train(TrainConfig(**settings, torch_threads=n, out=str(tmp_path / f"threads{n}")))
        for n in (1, 2)
    ]
    timing = {"seconds", "steps_per_second"}
    metrics = [
        [
            {k: None if math.isnan(v) else v for k, v in row.items() if k not in timing}
            for row in r.metrics
        ]
        for r in runs
    ]
    assert len(metrics[0]) == 3 and metrics[0] == metrics[1]
    assert any(row["eval_mean_return"] is not None for row in metrics[0])  # evaluated, the same
    states = [load_checkpoint(r.run_dir / "checkpoint.pt")["algorithm"]["policy"] for r in runs]
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
