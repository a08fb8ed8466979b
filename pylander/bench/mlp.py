"""The MLP ops of ``--algo reinforce`` against what they replaced, at the default sizes.

* ``policy_sample`` (16 rows: one env step of the default 16 envs) against the policy's
  forward pass in torch (``ActorCritic.logits``) plus ``sample_categorical``;
* ``actor_critic_forward`` (2,064 rows: the default rollout's observations, the last ones
  included) against the modules' forward passes (``log_softmax(actor(x))`` and the critic) and
  against its composite kernel;
* ``actor_critic_grads`` (256 rows: one minibatch of the default 2,048-step rollout in 8)
  against the same loss built from torch modules and ``clipped_pg_loss``, differentiated by
  autograd, and against the op's composite kernel (ATen calls from C++, what CUDA runs), which
  the CPU kernel's plain loops replace on the CPU.

Called back to back, as here, both sides keep their code and data in the caches; in a rollout
the env steps in between evict them, which costs torch's gemm more than the native loops
(``policy_sample`` ran ~2x faster interleaved with env steps than this ratio says).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pylander import ops
from pylander.policies import ActorCritic

OBS_SIZE, NUM_ACTIONS, HIDDEN = 8, 4, [64, 64]  # LunarLander and the default network
CLIP, ENT, VF = 0.12, 0.0, 0.5  # the default clip_coef, ent_coef, vf_coef


def make_policy(seed: int = 0) -> ActorCritic:
    torch.manual_seed(seed)
    policy = ActorCritic(OBS_SIZE, NUM_ACTIONS, HIDDEN, critic=True, normalize_obs=True)
    policy.normalizer.merge(1000.0, torch.randn(OBS_SIZE).double(), torch.rand(OBS_SIZE).double())
    return policy


def sample_in_torch(policy: ActorCritic, obs: Tensor, generator: torch.Generator):
    with torch.no_grad():
        return ops.sample_categorical(policy.logits(obs), generator)


def loss_by_autograd(
    policy: ActorCritic, batch: list[Tensor], clip: float, ent: float, vf: float, scale: float
) -> tuple[list[Tensor], Tensor]:
    """``ops.actor_critic_grads`` as the update computed it before: the loss from the torch
    modules and ``ops.clipped_pg_loss``, the gradients by autograd; ``(grads, stats)``, the
    gradients in ``actor_parameters() + critic_parameters()`` order. The tests use it as the
    op's oracle too."""
    obs, actions, advantages, old_log_probs, returns = batch
    logits = policy.actor(obs)
    old_chosen = old_log_probs.gather(1, actions[:, None])[:, 0]
    pg, entropy, clip_fraction = ops.clipped_pg_loss(
        logits, actions, advantages, old_chosen, clip, "sum"
    )
    loss = pg - ent * len(obs) * entropy
    value_loss = torch.zeros((), dtype=obs.dtype, device=obs.device)
    if policy.critic is not None:
        value_loss = 0.5 * (policy.critic(obs)[:, 0] - returns).pow(2).sum()
        loss = loss + vf * value_loss
    params = policy.actor_parameters() + policy.critic_parameters()
    grads = list(torch.autograd.grad(loss * scale, params))
    with torch.no_grad():
        kl = (old_log_probs.exp() * (old_log_probs - torch.log_softmax(logits, -1))).sum()
    stats = torch.stack([pg, value_loss, entropy, clip_fraction, kl]).detach().double()
    return grads, stats


def forward_in_torch(policy: ActorCritic, obs: Tensor) -> tuple[Tensor, Tensor]:
    """What the update computed before ``actor_critic_forward``: the modules' forward passes."""
    with torch.no_grad():
        return torch.log_softmax(policy.actor(obs), -1), policy.critic(obs)[:, 0]


def grads_native(policy: ActorCritic, batch: list[Tensor], scale: float) -> list[Tensor]:
    actor, critic = policy.actor_parameters(), policy.critic_parameters()
    a, c, _ = ops.actor_critic_grads(batch[0], actor, critic, *batch[1:], CLIP, ENT, VF, scale)
    return a + c


# An op's ``.redispatch(COMPOSITE, ...)`` runs its composite kernel (ATen calls from C++, what
# CUDA runs) past the CPU kernel that overrides it; the benchmarks and tests compare the two.
COMPOSITE = torch._C.DispatchKeySet(torch._C.DispatchKey.CompositeExplicitAutograd)


def through_composite(op: torch._ops.OpOverload, *args):
    """``op(*args)`` through its composite kernel, past the CPU kernel that overrides it."""
    with torch.no_grad():
        return op.redispatch(COMPOSITE, *args)


def grads_composite(policy: ActorCritic, batch: list[Tensor], scale: float) -> list[Tensor]:
    """``grads_native`` through the composite kernel."""
    actor, critic = policy.actor_parameters(), policy.critic_parameters()
    a, c, _ = through_composite(
        torch.ops.pylander.actor_critic_grads.default,
        batch[0], actor, critic, *batch[1:], CLIP, ENT, VF, scale,
    )  # fmt: skip
    return a + c


def minibatch(rows: int, seed: int = 1) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(rows, OBS_SIZE, generator=g)
    old = torch.log_softmax(torch.randn(rows, NUM_ACTIONS, generator=g), -1)
    return [
        obs,
        torch.randint(0, NUM_ACTIONS, (rows,), generator=g),
        torch.randn(rows, generator=g),
        old,
        torch.randn(rows, generator=g) * 3,
    ]


def mlp_candidates(
    rows_act: int = 16, rows_update: int = 256, rows_batch: int = 2064
) -> dict[str, dict]:
    """``{op: {"size": ..., "native": fn, baseline: fn}}`` after checking both sides agree."""
    policy = make_policy()
    stats = policy.normalizer
    obs = torch.randn(rows_act, OBS_SIZE)
    g = torch.Generator().manual_seed(0)
    native_act = lambda: ops.policy_sample(  # noqa: E731
        obs, policy.actor_parameters(), stats.mean, stats.var, stats.clip, g
    )
    torch_act = lambda: sample_in_torch(policy, obs, g)  # noqa: E731
    g.manual_seed(3)
    want = native_act()
    g.manual_seed(3)
    got = torch_act()
    assert torch.equal(want[0], got[0])
    batch, scale = minibatch(rows_update), 1.0 / rows_update
    autograd = lambda: loss_by_autograd(policy, batch, CLIP, ENT, VF, scale)  # noqa: E731
    composite = lambda: grads_composite(policy, batch, scale)  # noqa: E731
    for a, b, c in zip(grads_native(policy, batch, scale), autograd()[0], composite()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    whole = torch.randn(rows_batch, OBS_SIZE, generator=torch.Generator().manual_seed(2))
    networks = (policy.actor_parameters(), policy.critic_parameters())
    native_forward = lambda: ops.actor_critic_forward(whole, *networks)  # noqa: E731
    torch_forward = lambda: forward_in_torch(policy, whole)  # noqa: E731
    composite_forward = lambda: through_composite(  # noqa: E731
        torch.ops.pylander.actor_critic_forward.default, whole, *networks
    )

    for a, b in zip(native_forward(), torch_forward()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    return {
        "policy_sample": {
            "size": f"B{rows_act}",
            "native": native_act,
            "torch": torch_act,
        },
        "actor_critic_forward": {
            "size": f"B{rows_batch}",
            "native": native_forward,
            "torch": torch_forward,
            "composite": composite_forward,
        },
        "actor_critic_grads": {
            "size": f"B{rows_update}",
            "native": lambda: grads_native(policy, batch, scale),
            "autograd": autograd,
            "composite": composite,
        },
    }
