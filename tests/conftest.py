"""Shared test fixtures. Tests import the installed package (pip install --no-build-isolation .)."""

from __future__ import annotations

import os

import pytest
import torch

# One thread: the suite runs on 2-core CI machines and the ops' results must not depend on it.
torch.set_num_threads(1)
os.environ.setdefault("PYLANDER_NO_TQDM", "1")


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """pylander's entry points restore the thread count they set: in a fork of a process that
    ran on several threads, torch hangs at its first parallel region (as the distributed tests'
    forked ranks did when train's main() left two)."""
    yield
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert threads == 1, f"the test left torch on {threads} threads"


NO_CUDA = "no CUDA device: the CUDA kernels need a GPU"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
# Op tests run once per device, as pytorch/extension-cpp's do. The CUDA params are collected
# everywhere and skipped without a GPU, so a CPU run reports them rather than hiding them, and
# `pytest -k cuda` selects every CUDA test (their ids or names all contain "cuda").
CUDA = pytest.param("cuda", id="cuda", marks=needs_cuda)
DEVICES = [pytest.param("cpu", id="cpu"), CUDA]


def as_device(name: str) -> torch.device:
    """``torch.device(name)``, with the current index for CUDA (ops return ``cuda:N`` tensors)."""
    if name == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device the op tests run on: the CPU, and the current CUDA device."""
    return as_device(request.param)


@pytest.fixture(params=[CUDA])
def cuda(request) -> torch.device:
    """The current CUDA device, for CUDA-only tests (CUDA vs CPU parity, streams, mismatches)."""
    return as_device(request.param)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def tolerance(dtype: torch.dtype) -> dict:
    """Parity tolerance. The CUDA scans round exactly like the CPU kernels (no FMA contraction);
    the rest differ from the CPU and the reference by the device's exp/log and summation order."""
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    return {"rtol": tol, "atol": tol}


# --- random op inputs, drawn on the CPU so every device sees the same numbers -----------------


def random_rollout(
    T: int,
    N: int,
    dtype: torch.dtype,
    done_prob: float = 0.2,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[torch.Tensor]:
    """``[rewards, dones, values, last_values]`` of ``T`` steps of ``N`` envs, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(T, N, generator=g, dtype=dtype) * 3
    dones = torch.rand(T, N, generator=g) < done_prob
    values = torch.randn(T, N, generator=g, dtype=dtype)
    last = torch.randn(N, generator=g, dtype=dtype)
    return [x.to(device) for x in (rewards, dones, values, last)]


def random_batch(
    B: int,
    A: int,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    seed: int = 0,
    scale: float = 3.0,
) -> list[torch.Tensor]:
    """``[logits, actions, weights]`` for ``B`` samples of ``A`` actions, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, A, generator=g, dtype=dtype) * scale
    actions = torch.randint(0, A, (B,), generator=g)
    weights = torch.randn(B, generator=g, dtype=dtype)
    return [x.to(device) for x in (logits, actions, weights)]


def dominant_logits(
    B: int, A: int, dtype: torch.dtype, device: torch.device | str, low: float = -300.0
) -> torch.Tensor:
    """Row ``b`` has logit 0 at category ``b % A`` and ``low`` elsewhere; each draw is ``b % A``."""
    logits = torch.full((B, A), low, dtype=dtype)
    logits[torch.arange(B), torch.arange(B) % A] = 0.0
    return logits.to(device)


def on_cpu(*args) -> list:
    """``args`` with every tensor moved to the CPU (to call the CPU kernels or the reference)."""
    return [x.cpu() if isinstance(x, torch.Tensor) else x for x in args]


# --- the command line, shared by the CLI and run-directory tests --------------------------

# 64 env steps per update, a checkpoint every 2 updates: a few seconds per run.
CLI_FAST = [
    "--env",
    "CartPole-v1",
    "--num-envs",
    "4",
    "--num-steps",
    "16",
    "--checkpoint-interval",
    "2",
    "--eval-episodes",
    "2",
    "--log-interval",
    "1000",
    "--quiet",
]
SUBPROCESS_ENV = {**os.environ, "PYLANDER_NO_TQDM": "1", "OMP_NUM_THREADS": "1"}


def usage_error(argv: list[str], capsys) -> str:
    """Run the train CLI in-process; it must exit 2 with one short usage line and the error,
    which this returns."""
    with pytest.raises(SystemExit) as info:
        from pylander.train import main as train_main

        train_main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err
    # One short usage line and the error, not the usage of every flag.
    *_notes, usage, error = err.splitlines()
    assert usage == "usage: python -m pylander.train [options]; see --help", err
    assert error.startswith("python -m pylander.train: error: "), err
    return error.split("error: ", 1)[1].strip()


# --- a tiny trained run, shared by the Agent and export tests ------------------------------


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """One CartPole run (4 updates, with observation normalisation); tests only read it."""
    from tiny_run import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("tiny") / "run")


@pytest.fixture(scope="session")
def observations():
    """200 real CartPole observations."""
    from tiny_run import env_observations

    return env_observations(count=200)
