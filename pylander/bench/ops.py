"""The ``ops`` section: each native op against the notebook's Python loop and the best
pure-PyTorch versions, at several sizes, after checking that every candidate computes the same.

``discounted_returns``, ``sample_categorical`` and ``pg_loss`` forward + backward; the baselines
are plain functions here, so that the tests can check them against the native ops too. On the
CPU also the MLP ops of ``--algo reinforce`` (:mod:`pylander.bench.mlp`).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from torch import Tensor

from pylander import ops
from pylander.bench.mlp import mlp_candidates
from pylander.bench.settings import Log, Settings
from pylander.bench.timing import interleaved, speedup

GAMMA = 0.99  # the notebook's discount
DONE_PROB = 0.01  # one episode end per ~100 steps, about a LunarLander episode under a new policy
ENT_COEF = 0.01  # an entropy bonus in the pg_loss comparison, so its gradient path is timed too
NUM_ACTIONS = 4  # LunarLander


def returns_notebook_loop(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """The notebook's ``discount_rewards`` loop, with episode ends, over all N columns at once.

    One Python iteration per time step on an ``[N]`` row; for ``N == 1`` it is the notebook's
    loop exactly, and for ``N > 1`` it is faster than calling the notebook's function per column.
    """
    discounted = torch.zeros_like(rewards)
    live = (~dones).to(rewards.dtype) * gamma
    R = torch.zeros_like(rewards[0])
    for t in reversed(range(len(rewards))):
        R = R * live[t] + rewards[t]
        discounted[t] = R
    return discounted


def returns_torch_cumsum(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """Closed form with one reverse cumulative sum: O(1) tensor ops whatever T is.

    ``R[t] = gamma**-t * sum_{k=t}^{end(t)} gamma**k r[k]`` where ``end(t)`` is the first episode
    end at or after ``t``. Computed in float64: the ``gamma**-t`` rescaling would lose float32's
    precision (fine for the benchmark's gamma and T; very small gamma or huge T overflow).
    """
    T, N = rewards.shape
    steps = torch.arange(T, dtype=torch.float64, device=rewards.device)
    scale = torch.pow(gamma, steps).unsqueeze(1)  # [T, 1]
    suffix = (rewards.double() * scale).flip(0).cumsum(0).flip(0)
    suffix = torch.cat([suffix, suffix.new_zeros(1, N)])  # suffix[T] = 0
    index = torch.arange(T, device=rewards.device).unsqueeze(1).expand(T, N)
    end = torch.where(dones, index, T).flip(0).cummin(0).values.flip(0)  # T when none follows
    after = (end + 1).clamp_(max=T)
    return ((suffix[:T] - suffix.gather(0, after)) / scale).to(rewards.dtype)


def returns_torch_doubling(rewards: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """Hillis-Steele reverse scan: ``ceil(log2 T)`` rounds of whole-tensor ops, stable for any
    gamma. After the round with offset ``k``, ``R[t]`` sums steps ``t .. t + 2k - 1`` and ``D[t]``
    is the discount from ``t`` to ``t + 2k`` (zero past an episode end or past ``T``)."""
    T = rewards.shape[0]
    R = rewards.clone()
    D = (~dones).to(rewards.dtype) * gamma
    k = 1
    while k < T:
        nxt = R.clone()
        nxt[:-k].addcmul_(D[:-k], R[k:])
        R = nxt
        if 2 * k < T:
            d = torch.zeros_like(D)
            torch.mul(D[:-k], D[k:], out=d[:-k])
            D = d
        k *= 2
    return R


def sample_with_categorical(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``Categorical(logits=...)``: ``sample()`` and ``log_prob``."""
    dist = torch.distributions.Categorical(logits=logits)
    actions = dist.sample()
    return actions, dist.log_prob(actions)


def sample_with_multinomial(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``softmax`` + ``torch.multinomial`` + the log of the chosen probability."""
    probs = torch.softmax(logits, -1)
    actions = torch.multinomial(probs, 1)
    return actions.squeeze(1), probs.gather(1, actions).log_().squeeze(1)


def pg_autograd(logits: Tensor, actions: Tensor, weights: Tensor, entropy: bool = True) -> Tensor:
    """``log_softmax`` + ``gather`` (+ the entropy, as ``pg_loss`` returns it) and autograd."""
    log_probs = torch.log_softmax(logits, -1)
    loss = -(weights * log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)).mean()
    if entropy:
        loss = loss + ENT_COEF * (log_probs.exp() * log_probs).sum(-1).mean()
    (grad,) = torch.autograd.grad(loss, logits)
    return grad


def pg_native(logits: Tensor, actions: Tensor, weights: Tensor, entropy: bool = True) -> Tensor:
    """``ops.pg_loss`` (its own backward formula) and autograd, as :func:`pg_autograd`."""
    loss, ent = ops.pg_loss(logits, actions, weights, "mean")
    (grad,) = torch.autograd.grad(loss - ENT_COEF * ent if entropy else loss, logits)
    return grad


def _op_entry(
    samples: dict[str, list[float]],
    native: str = "native",
    baselines: dict[str, list[str]] | None = None,
) -> dict:
    """Times in microseconds and ``speedup_vs_<baseline>`` for each baseline.

    ``baselines`` maps a baseline's name to the candidates it stands for; with several, the
    fastest one (by median) is the baseline and is named in ``<baseline>_variant``.
    """
    entry = {f"{name}_us": statistics.median(times) * 1e6 for name, times in samples.items()}
    for baseline, members in (baselines or {}).items():
        best = min(members, key=lambda m: statistics.median(samples[m]))
        if len(members) > 1:
            entry[f"{baseline}_us"] = statistics.median(samples[best]) * 1e6
            entry[f"{baseline}_variant"] = best
        entry[f"speedup_vs_{baseline}"] = speedup(samples[best], samples[native])
    return entry


def bench_ops(settings: Settings, workdir: Path, log: Log) -> dict:
    """The ``ops`` section: ``{"ops": {op: {size: entry}}}`` (see :func:`_op_entry`)."""
    run = dict(
        repeats=settings.repeats,
        sample_seconds=settings.sample_seconds,
        warmup_calls=settings.warmup_calls,
    )
    device = torch.device(settings.device)
    g = torch.Generator().manual_seed(0)

    def data(*tensors: Tensor) -> list[Tensor]:  # drawn on the CPU: the same data on any device
        return [t.to(device) for t in tensors]

    results: dict[str, dict] = {"discounted_returns": {}, "sample_categorical": {}, "pg_loss": {}}
    for T, N in settings.returns_sizes:
        rewards, dones = data(
            torch.randn(T, N, generator=g), torch.rand(T, N, generator=g) < DONE_PROB
        )
        results["discounted_returns"][f"T{T}_N{N}"] = _bench_returns(rewards, dones, run)
        log(f"  discounted_returns T{T}_N{N} done")
    for B in settings.batch_sizes:
        (logits,) = data(torch.randn(B, NUM_ACTIONS, generator=g))
        results["sample_categorical"][f"B{B}_A{NUM_ACTIONS}"] = _bench_sampling(logits, run)
        log(f"  sample_categorical B{B}_A{NUM_ACTIONS} done")
    for B in settings.batch_sizes:
        logits, actions, weights = data(
            torch.randn(B, NUM_ACTIONS, generator=g),
            torch.randint(0, NUM_ACTIONS, (B,), generator=g),
            torch.randn(B, generator=g),
        )
        results["pg_loss"][f"B{B}_A{NUM_ACTIONS}"] = _bench_pg_loss(
            logits.requires_grad_(), actions, weights, run
        )
        log(f"  pg_loss B{B}_A{NUM_ACTIONS} done")
    if device.type == "cpu":  # the trainer's CPU sizes; the MLP ops' CUDA path is composite
        for op, case in mlp_candidates().items():
            size, candidates = case.pop("size"), case
            baselines = {name: [name] for name in candidates if name != "native"}
            results[op] = {size: _op_entry(interleaved(candidates, **run), baselines=baselines)}
            log(f"  {op} {size} done")
    return {"ops": results}


def _bench_returns(rewards: Tensor, dones: Tensor, run: dict) -> dict:
    want = ops.discounted_returns(rewards, dones, GAMMA)
    candidates = {
        "native": lambda: ops.discounted_returns(rewards, dones, GAMMA),
        "python": lambda: returns_notebook_loop(rewards, dones, GAMMA),
        "torch_cumsum": lambda: returns_torch_cumsum(rewards, dones, GAMMA),
        "torch_doubling": lambda: returns_torch_doubling(rewards, dones, GAMMA),
    }
    for name, fn in candidates.items():  # every contestant computes the same thing
        torch.testing.assert_close(fn(), want, rtol=1e-4, atol=1e-4, msg=name)
    with torch.no_grad():
        samples = interleaved(candidates, **run)
    return _op_entry(
        samples, baselines={"python": ["python"], "torch": ["torch_cumsum", "torch_doubling"]}
    )


def _bench_sampling(logits: Tensor, run: dict) -> dict:
    B = logits.shape[0]
    for fn in (ops.sample_categorical, sample_with_categorical, sample_with_multinomial):
        actions, log_probs = fn(logits)
        assert actions.shape == (B,) and log_probs.shape == (B,)
        want = torch.log_softmax(logits, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(log_probs, want, rtol=1e-5, atol=1e-5)
    candidates = {
        "native": lambda: ops.sample_categorical(logits),
        "categorical": lambda: sample_with_categorical(logits),
        "multinomial": lambda: sample_with_multinomial(logits),
    }
    with torch.no_grad():  # as in a rollout
        samples = interleaved(candidates, **run)
    return _op_entry(
        samples, baselines={"categorical": ["categorical"], "multinomial": ["multinomial"]}
    )


def _bench_pg_loss(logits: Tensor, actions: Tensor, weights: Tensor, run: dict) -> dict:
    torch.testing.assert_close(
        pg_native(logits, actions, weights),
        pg_autograd(logits, actions, weights),
        rtol=1e-5,
        atol=1e-6,
    )
    candidates = {
        "native": lambda: pg_native(logits, actions, weights),
        "autograd": lambda: pg_autograd(logits, actions, weights),
        "native_loss_only": lambda: pg_native(logits, actions, weights, entropy=False),
        "autograd_loss_only": lambda: pg_autograd(logits, actions, weights, entropy=False),
    }
    samples = interleaved(candidates, **run)
    entry = _op_entry(samples, baselines={"autograd": ["autograd"]})
    # Without the entropy term: what a caller that ignores the entropy output would see.
    entry["speedup_vs_autograd_loss_only"] = speedup(
        samples["autograd_loss_only"], samples["native_loss_only"]
    )
    return entry
