"""The MLP ops of ``--algo reinforce`` on every device: ``policy_sample`` against the policy's
own forward pass and the native sampler, ``policy_greedy`` against its argmax,
``actor_critic_forward`` against the modules, ``actor_critic_grads`` against autograd through the
loss written in torch (``bench.mlp.loss_by_autograd``, also the benchmark's baseline), opcheck,
and bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.library import opcheck

import pylander  # noqa: F401  (loads the ops)
from pylander import ops
from pylander.bench.mlp import COMPOSITE, loss_by_autograd
from pylander.policies import ActorCritic

from conftest import tolerance

OPS = torch.ops.pylander
SHAPES = [[], [64], [64, 64], [7, 5, 3]]  # hidden sizes


def policy(hidden, dtype, device, normalize=False, critic=True, seed=0) -> ActorCritic:
    torch.manual_seed(seed)
    net = ActorCritic(6, 4, hidden, critic=critic, normalize_obs=normalize)
    for p in net.parameters():  # larger weights than the init, so every layer matters
        p.data.normal_(0, 0.7)
    if normalize:
        net.normalizer.merge(
            50.0, torch.randn(6, dtype=torch.float64), torch.rand(6).double() + 0.1
        )
    return net.to(device=device, dtype=dtype)


def over_policies(test):
    """Parametrise ``test`` over hidden sizes, batch sizes, and with and without normalisation."""
    for name, values, ids in [
        ("normalize", [False, True], ["raw", "normalized"]),
        ("B", [1, 16, 37], None),
        ("hidden", SHAPES, str),
    ]:
        test = pytest.mark.parametrize(name, values, ids=ids)(test)
    return test


def observations(B, dtype, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 6, generator=g, dtype=torch.float64) * 2).to(dtype).to(device)


@over_policies
def test_policy_sample_is_the_policy_forward_then_the_sampler(hidden, B, normalize, dtype, device):
    net = policy(hidden, dtype, device, normalize)
    obs = observations(B, dtype, device)
    stats = net.normalizer
    mean, var = (stats.mean, stats.var) if normalize else (None, None)
    got = ops.policy_sample(obs, net.actor_parameters(), mean, var, 10.0,
                            torch.Generator(device=device).manual_seed(5))  # fmt: skip
    with torch.no_grad():
        logits = net.logits(obs)
    want = ops.sample_categorical(logits, torch.Generator(device=device).manual_seed(5))
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], **tolerance(dtype))
    # Policy.act is this op.
    acts = net.act(obs, torch.Generator(device=device).manual_seed(5))
    assert torch.equal(acts, want[0])


@over_policies
def test_policy_greedy_is_the_argmax_of_the_policy_logits(hidden, B, normalize, dtype, device):
    net = policy(hidden, dtype, device, normalize)
    obs = observations(B, dtype, device)
    with torch.no_grad():
        want = net.logits(obs).argmax(-1)
    assert torch.equal(net.greedy()(obs), want)
    stats = net.normalizer
    mean, var = (stats.mean, stats.var) if normalize else (None, None)
    got = ops.policy_greedy(obs, net.actor_parameters(), mean, var, 10.0)
    assert got.dtype == torch.long and torch.equal(got, want)
    # The composite kernel (what CUDA runs) gives the module's logits bit for bit.
    with torch.no_grad():
        composite = OPS.policy_greedy.default.redispatch(
            COMPOSITE, obs, net.actor_parameters(), mean, var, 10.0
        )
    assert torch.equal(composite, want)


@pytest.mark.parametrize("hidden", SHAPES, ids=str)
@pytest.mark.parametrize("B", [0, 1, 37, 600])  # 600: three blocks of rows on the CPU
@pytest.mark.parametrize("critic", [True, False], ids=["critic", "no_critic"])
def test_actor_critic_forward_is_the_modules_log_softmax_and_value(
    hidden, B, critic, dtype, device
):
    net = policy(hidden, dtype, device, critic=critic)
    obs = observations(B, dtype, device)
    actor, critic_params = net.actor_parameters(), net.critic_parameters()
    with torch.no_grad():
        want = torch.log_softmax(net.actor(obs), -1), net.value(obs) if critic else obs.new_empty(0)
    got = ops.actor_critic_forward(obs, actor, critic_params)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == dtype
        torch.testing.assert_close(g, w, **tolerance(dtype))
    # The composite kernel (what CUDA runs) gives the module's bits.
    with torch.no_grad():
        composite = OPS.actor_critic_forward.default.redispatch(
            COMPOSITE, obs, actor, critic_params
        )
    assert all(torch.equal(c, w) for c, w in zip(composite, want))


def test_actor_critic_forward_takes_strided_obs_and_gives_nan_rows_for_nan_inputs(dtype, device):
    net = policy([64, 64], dtype, device)
    networks = net.actor_parameters(), net.critic_parameters()
    obs = observations(40, dtype, device).t().contiguous().t()  # column-major
    assert not obs.is_contiguous()
    want = ops.actor_critic_forward(obs.contiguous(), *networks)
    assert all(torch.equal(g, w) for g, w in zip(ops.actor_critic_forward(obs, *networks), want))
    bad = obs.contiguous()
    bad[3, 2] = float("nan")
    log_probs, values = ops.actor_critic_forward(bad, *networks)
    assert log_probs[3].isnan().all() and values[3].isnan()
    rest = torch.arange(40, device=device) != 3
    assert torch.equal(log_probs[rest], want[0][rest]) and torch.equal(values[rest], want[1][rest])


def test_evaluation_plays_the_greedy_op_and_gets_the_modules_returns():
    from pylander.evaluate import evaluate

    torch.manual_seed(0)
    net = ActorCritic(4, 2, [16], critic=False)
    for p in net.parameters():
        p.data.normal_(0, 0.7)

    class Module(torch.nn.Module):  # the same logits, without ActorCritic's greedy()
        def forward(self, obs):
            return net(obs)

    fast = evaluate(net, "CartPole-v1", 6, 3, num_envs=3, processes=1)
    slow = evaluate(Module(), "CartPole-v1", 6, 3, num_envs=3, processes=1)
    assert fast.shape == (6,) and fast.std() > 0 and np.array_equal(fast, slow)


def test_policy_sample_clips_normalised_observations(device):
    net = policy([8], torch.float64, device, normalize=True)
    obs = observations(5, torch.float64, device) * 1e6  # far outside: every input clips
    stats = net.normalizer
    g = lambda: torch.Generator(device=device).manual_seed(0)  # noqa: E731
    got = ops.policy_sample(obs, net.actor_parameters(), stats.mean, stats.var, 0.5, g())[1]
    clipped = ((obs - stats.mean) * torch.rsqrt(stats.var + 1e-8)).clamp(-0.5, 0.5)
    want = ops.sample_categorical(net.actor(clipped).detach(), g())[1]
    torch.testing.assert_close(got, want, **tolerance(torch.float64))


@pytest.mark.parametrize("hidden", SHAPES, ids=str)
@pytest.mark.parametrize("critic", [True, False], ids=["critic", "no_critic"])
@pytest.mark.parametrize("clip", [0.0, 0.2])
def test_actor_critic_grads_match_autograd(hidden, critic, clip, dtype, device):
    check_grads_match_autograd(hidden, critic, clip, 45, dtype, device)


@pytest.mark.parametrize("B", [16, 256, 600])
def test_actor_critic_grads_match_autograd_over_blocks_of_rows(B, dtype, device):
    """The CPU kernel works through blocks of 256 rows and adds up their gradients: exactly one
    block, and several with a partial last one."""
    check_grads_match_autograd([64, 64], True, 0.2, B, dtype, device)


def test_the_composite_kernel_matches_the_cpu_kernel(dtype):
    """The composite kernel (ATen ops; what CUDA runs) called on the CPU, where its own kernel
    takes precedence, so that CI without a GPU checks it too."""
    B = 300
    net = policy([64, 64], dtype, "cpu")
    obs = observations(B, dtype, "cpu")
    g = torch.Generator().manual_seed(4)
    actions = torch.randint(0, 4, (B,), generator=g)
    advantages = torch.randn(B, generator=g, dtype=torch.float64).to(dtype)
    returns = (torch.randn(B, generator=g, dtype=torch.float64) * 20).to(dtype)
    with torch.no_grad():
        old = torch.log_softmax(net.actor(obs) + 0.3 * torch.randn(B, 4, generator=g).to(dtype), -1)
    args = (obs, net.actor_parameters(), net.critic_parameters(), actions, advantages, old,
            returns, 0.2, 0.01, 0.5, 1 / B)  # fmt: skip
    with torch.no_grad():
        *want_grads, want_stats = OPS.actor_critic_grads.default(*args)
        *got_grads, got_stats = OPS.actor_critic_grads.default.redispatch(COMPOSITE, *args)
    for got, want in zip(got_grads[0] + got_grads[1], want_grads[0] + want_grads[1]):
        torch.testing.assert_close(got, want, **tolerance(dtype))
    torch.testing.assert_close(got_stats, want_stats, rtol=1e-5, atol=1e-5)


def check_grads_match_autograd(hidden, critic, clip, B, dtype, device):
    net = policy(hidden, dtype, device, critic=critic)
    obs = observations(B, dtype, device)
    g = torch.Generator().manual_seed(3)
    actions = torch.randint(0, 4, (B,), generator=g).to(device)
    advantages = torch.randn(B, generator=g, dtype=torch.float64).to(dtype).to(device)
    returns = (torch.randn(B, generator=g, dtype=torch.float64) * 20).to(dtype).to(device)
    with torch.no_grad():  # an older policy: ratios spread around 1, some clipped
        noise = torch.randn(B, 4, generator=g, dtype=torch.float64).to(dtype).to(device)
        old_log_probs = torch.log_softmax(net.actor(obs) + 0.3 * noise, -1)
    batch = [obs, actions, advantages, old_log_probs, returns]
    coefs = (clip, 0.05, 0.5, 1 / 60)  # clip_coef, ent_coef, vf_coef, scale
    actor_grads, critic_grads, stats = ops.actor_critic_grads(
        obs, net.actor_parameters(), net.critic_parameters(), *batch[1:], *coefs
    )
    want_grads, want_stats = loss_by_autograd(net, batch, *coefs)
    assert len(actor_grads) == len(net.actor_parameters())
    assert len(critic_grads) == len(net.critic_parameters())
    for got, want in zip(actor_grads + critic_grads, want_grads):
        torch.testing.assert_close(got, want, **tolerance(dtype))
    torch.testing.assert_close(stats, want_stats, rtol=1e-5, atol=1e-5)
    if clip > 0:
        assert 0 < stats[3] < 1  # the inputs did clip some rows, so that path is checked


def test_empty_batches_give_empty_actions_and_zero_gradients(dtype, device):
    """A rank's share of a minibatch can be empty in a distributed update."""
    net = policy([5], dtype, device, normalize=True)
    obs = observations(0, dtype, device)
    stats = net.normalizer
    actions, log_probs = ops.policy_sample(obs, net.actor_parameters(), stats.mean, stats.var)
    assert actions.shape == (0,) and log_probs.shape == (0,)
    empty = obs.new_zeros(0)
    actor_grads, critic_grads, stats = ops.actor_critic_grads(
        obs, net.actor_parameters(), net.critic_parameters(), actions, empty,
        obs.new_zeros(0, 4), empty, 0.2, 0.01, 0.5, 1.0,
    )  # fmt: skip
    for grad, param in zip(actor_grads + critic_grads, net.parameters()):
        assert grad.shape == param.shape and not grad.any()
    assert torch.equal(stats, torch.zeros(5, dtype=torch.float64, device=device))


def opcheck_cases(device, dtype):
    net = policy([5], dtype, device, normalize=True)
    obs = observations(7, dtype, device)
    g = torch.Generator().manual_seed(0)
    actions = torch.randint(0, 4, (7,), generator=g).to(device)
    adv = torch.randn(7, generator=g).to(dtype).to(device)
    old = torch.log_softmax(torch.randn(7, 4, generator=g), -1).to(dtype).to(device)
    # Logits far apart: the draw is certain, so eager and traced runs agree.
    big = [p.detach() * 50 for p in net.actor_parameters()]
    actor, critic = net.actor_parameters(), net.critic_parameters()
    detached = lambda ps: [p.detach() for p in ps]  # noqa: E731
    stats = net.normalizer
    return [
        (OPS.policy_sample.default, (obs, big, None, None, 10.0, None)),
        (OPS.policy_sample.default, (obs, big, stats.mean, stats.var, 3.0, None)),
        (OPS.policy_greedy.default, (obs, big, stats.mean, stats.var, 3.0)),
        (OPS.actor_critic_forward.default, (obs, detached(actor), detached(critic))),
        (OPS.actor_critic_forward.default, (obs, detached(actor), [])),
        (
            OPS.actor_critic_grads.default,
            (obs, detached(actor), detached(critic), actions, adv, old, adv, 0.2, 0.01, 0.5, 0.1),
        ),
        (
            OPS.actor_critic_grads.default,
            (obs, detached(actor), [], actions, adv, old, adv, 0.0, 0.0, 0.5, 1.0),
        ),  # fmt: skip
    ]


@pytest.mark.parametrize("case", range(7))
def test_opcheck(case, dtype, device):
    op, args = opcheck_cases(device, dtype)[case]
    opcheck(op, args)


def bad_inputs():
    net = policy([5], torch.float32, "cpu", normalize=True)
    obs = observations(3, torch.float32, "cpu")
    actor, critic = net.actor_parameters(), net.critic_parameters()
    mean, var = net.normalizer.mean, net.normalizer.var
    a, w = torch.zeros(3, dtype=torch.long), torch.zeros(3)
    old = torch.log_softmax(torch.zeros(3, 4), -1)
    sample = lambda *x: ops.policy_sample(*x)  # noqa: E731
    greedy = lambda *x: ops.policy_greedy(*x)  # noqa: E731
    forward = lambda *x: ops.actor_critic_forward(*x)  # noqa: E731
    grads = lambda *x: ops.actor_critic_grads(*x, 0.2, 0.01, 0.5, 1.0)  # noqa: E731
    return [
        (lambda: sample(obs[0], actor), "`obs` must have shape [B, obs_size]"),
        (lambda: sample(obs.long(), actor), "`obs` must be float32 or float64"),
        (lambda: sample(obs, actor[:3]), "the weight and bias of each layer in turn"),
        (lambda: sample(obs, []), "the weight and bias of each layer in turn"),
        (lambda: sample(obs[:, :4], actor), "`actor` layer 0 has weight [5, 6]"),
        (lambda: sample(obs, [actor[0], actor[1], actor[0], actor[3]]), "`actor` layer 1"),
        (lambda: sample(obs, [p.double() for p in actor]), "must have the dtype of `obs`"),
        (lambda: sample(obs, actor, mean, None), "give both `obs_mean` and `obs_var`"),
        (lambda: sample(obs, actor, mean[:2], var), "`obs_mean` must have shape [obs_size]"),
        (lambda: greedy(obs[0], actor), "`obs` must have shape [B, obs_size]"),
        (lambda: greedy(obs, actor[:3]), "the weight and bias of each layer in turn"),
        (lambda: forward(obs[0], actor, critic), "`obs` must have shape [B, obs_size]"),
        (lambda: forward(obs[:, :4], actor, critic), "`actor` layer 0 has weight [5, 6]"),
        (lambda: forward(obs, actor, actor), "the critic must have one output"),
        (lambda: forward(obs, actor, critic[:3]), "`critic` must be the weight and bias"),
        (lambda: grads(obs, actor, critic, a, w, old[:, :2], w), "`old_log_probs` must have"),
        (lambda: grads(obs, actor, actor, a, w, old, w), "the critic must have one output"),
        (lambda: grads(obs, actor, critic, a + 4, w, old, w), "`actions` must lie in [0, 4)"),
        (lambda: grads(obs, actor, critic, a, w[:2], old, w), "`actions` and `weights` must"),
        (lambda: grads(obs, actor, critic, a, w, old, w[:2]), "`returns` must have the shape"),
        (lambda: grads(obs, actor, critic, a, w, old, w.double()), "`returns` must be Float"),
        (lambda: grads(obs, actor, critic, a, w * float("nan"), old, w), "contains NaN"),
    ]


@pytest.mark.parametrize("case", range(len(bad_inputs())))
def test_bad_inputs_raise_named_errors(case):
    call, fragment = bad_inputs()[case]
    with pytest.raises((RuntimeError, ValueError)) as info:
        call()
    assert fragment in str(info.value)
    assert "\n" not in str(info.value).split("Exception raised from")[0].strip()


def cpu_vector_bytes() -> int:
    return {"AVX512": 64, "AVX2": 32}.get(torch.backends.cpu.get_cpu_capability(), 16)


@pytest.mark.parametrize("width", [16, 32])
def test_the_narrower_vector_builds_compute_the_same(width):
    """The CPU kernels' loops are built for 64-, 32- and 16-byte vectors and run the widest the
    CPU has; PYLANDER_VECTOR_BYTES runs a narrower one, here the parity tests in a subprocess."""
    if width > cpu_vector_bytes():
        pytest.skip(f"this CPU has no {width}-byte vectors")
    tests = Path(__file__).parent
    env = {**os.environ, "PYLANDER_VECTOR_BYTES": str(width)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
         "cpu and (match_autograd or policy_sample_is or policy_greedy or forward_is or composite"
         " or empty)",
         str(tests / "test_actor_critic_ops.py")],
        env=env, capture_output=True, text=True, timeout=300, cwd=tests,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and " failed" not in run.stdout


def test_a_bad_vector_width_is_a_clear_error():
    code = "import torch, pylander; from pylander import ops; ops.policy_sample(torch.zeros(1, 2), [torch.zeros(3, 2), torch.zeros(3)], None, None)"  # noqa: E501
    env = {**os.environ, "PYLANDER_VECTOR_BYTES": "48"}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode != 0
    assert 'PYLANDER_VECTOR_BYTES must be 16, 32 or 64, got "48"' in run.stderr
