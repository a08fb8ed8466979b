"""Shared test fixtures. Tests import the installed package (pip install --no-build-isolation .)."""

import os

import pytest
import torch

# One thread: the suite runs on 2-core CI machines and the ops' results must not depend on it.
torch.set_num_threads(1)
os.environ.setdefault("PYLANDER_NO_TQDM", "1")


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def dtype(request) -> torch.dtype:
    return request.param


def tolerance(dtype: torch.dtype) -> dict:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
