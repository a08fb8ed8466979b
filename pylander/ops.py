"""Typed wrappers for the native operators, plus their fake kernels and autograd formulas.

The kernels live in ``csrc/`` (CPU in ``csrc/cpu``, CUDA in ``csrc/cuda``); the schemas are
declared once in ``csrc/ops.cpp``. This module registers, with :mod:`torch.library`:

* fake (meta) kernels, so the ops work under ``torch.compile`` and FakeTensor tracing;
* autograd formulas, so gradients flow through every op.

Semantics (``dones[t, n]`` is true when the step taken at ``t`` in env ``n`` ended its episode):

* ``discounted_returns``: ``R[t] = r[t] + gamma * (1 - dones[t]) * R[t + 1]`` with
  ``R[T] = bootstrap`` (zero when not given).
* ``gae``: ``delta[t] = r[t] + gamma * (1 - dones[t]) * V[t + 1] - V[t]`` with
  ``V[T] = last_values``, and ``A[t] = delta[t] + gamma * lam * (1 - dones[t]) * A[t + 1]``.
* ``pg_loss``: ``reduce_i(-weights[i] * log_softmax(logits[i])[actions[i]])`` and the mean
  entropy of ``softmax(logits)``; an empty batch gives zeros. With ``old_log_probs`` and
  ``clip_coef > 0`` the loss is PPO's clipped surrogate instead (:func:`clipped_pg_loss`).
* ``sample_categorical``: one action per row of ``softmax(logits)`` and its log-probability.
* ``adam_scan``: ``T`` steps of ``torch.optim.Adam`` on fixed gradients, bit for bit.
* ``policy_sample`` and ``actor_critic_grads``: the tanh MLP actor's sampling step and one
  minibatch's actor and critic gradients, each in one call (composite: one kernel, any device).
* ``notebook_act``: the notebook's ``PolicyNetwork.act``, on torch's global generator.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Reduction = Literal["mean", "sum"]

_ops = torch.ops.pylander


def discounted_returns(
    rewards: Tensor, dones: Tensor, gamma: float, bootstrap: Tensor | None = None
) -> Tensor:
    """Discounted returns of a ``[T, N]`` rollout, restarting after every done step.

    Args:
        rewards: ``[T, N]`` float32/float64 rewards.
        dones: ``[T, N]`` bool, true where the step ended its episode.
        gamma: discount factor in ``[0, 1]``.
        bootstrap: optional ``[N]`` value of the state after the last step, added (discounted)
            to the tail of every episode that is still running at ``T``.
    """
    return _ops.discounted_returns(rewards, dones, float(gamma), bootstrap)


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_values: Tensor, gamma: float, lam: float
) -> Tensor:
    """Generalised advantage estimates of a ``[T, N]`` rollout (Schulman et al., 2016).

    ``values`` is ``[T, N]``, the critic's value of each step's observation; ``last_values`` is
    ``[N]``, the value of the observation after the last step.
    """
    return _ops.gae(rewards, values, dones, last_values, float(gamma), float(lam))


def pg_loss(
    logits: Tensor, actions: Tensor, weights: Tensor, reduction: Reduction = "mean"
) -> tuple[Tensor, Tensor]:
    """Weighted log-prob policy-gradient loss and the mean policy entropy.

    Returns ``(loss, entropy)``, both scalars, where
    ``loss = reduce_i(-weights[i] * log_softmax(logits[i])[actions[i]])``. Its gradient with
    respect to ``logits`` is computed by the native backward, without materialising
    ``log_softmax``. Minimising ``loss - c * entropy`` gives an entropy bonus.
    """
    loss, entropy, _ = _ops.pg_loss(logits, actions, weights, reduction)
    return loss, entropy


def clipped_pg_loss(
    logits: Tensor,
    actions: Tensor,
    weights: Tensor,
    old_log_probs: Tensor,
    clip_coef: float,
    reduction: Reduction = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """PPO's clipped surrogate policy loss, the mean policy entropy and the clip fraction.

    With ``r[i] = exp(log_softmax(logits[i])[actions[i]] - old_log_probs[i])`` and
    ``eps = clip_coef``, returns ``(loss, entropy, clip_fraction)``, all scalars, where::

        loss = -reduce_i(min(r[i] * weights[i], clip(r[i], 1 - eps, 1 + eps) * weights[i]))

    and ``clip_fraction`` is the fraction of rows whose ratio has left ``[1 - eps, 1 + eps]`` in
    the direction their weight favours (``r > 1 + eps`` with ``weights > 0``, or
    ``r < 1 - eps`` with ``weights < 0``): the rows that add nothing to the gradient. The
    gradient with respect to ``logits`` is exactly that of ``loss`` (and of ``entropy``),
    computed by the same native op as :func:`pg_loss`, which it is, bit for bit, when
    ``clip_coef == 0`` (``old_log_probs`` is then unused and ``clip_fraction`` is 0).
    ``weights`` and ``old_log_probs`` are constants here: no gradient flows to them.

    How a trainer calls it: once per rollout, under ``torch.no_grad()``, with the policy that
    collected it::

        old_log_probs = torch.log_softmax(old_logits, -1).gather(1, actions[:, None])[:, 0]

    (the ``log_probs`` that :func:`sample_categorical` returned while acting are the same values
    up to rounding, if the policy has not changed since); then, in every epoch and minibatch
    of the update::

        loss, entropy, clip_fraction = ops.clipped_pg_loss(
            policy(obs[mb]), actions[mb], advantages[mb], old_log_probs[mb], clip_coef)

    Args:
        logits: ``[B, A]`` float32/float64 logits of the current policy.
        actions: ``[B]`` int64 actions taken, in ``[0, A)``.
        weights: ``[B]`` advantages, in the dtype of ``logits``.
        old_log_probs: ``[B]`` log-probabilities of ``actions`` under the policy that
            collected the data, in the dtype of ``logits``.
        clip_coef: PPO's ``eps``, a finite number ``>= 0`` (0 turns clipping off).
        reduction: ``"mean"`` divides the summed surrogate by ``B``; ``"sum"`` does not.
    """
    return _ops.pg_loss(logits, actions, weights, reduction, old_log_probs, float(clip_coef))


def sample_categorical(
    logits: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Sample one action per row of ``softmax(logits)``; returns ``(actions, log_probs)``.

    ``logits`` is ``[B, A]`` and need not be normalised. A seeded ``generator`` (on the device of
    ``logits``) makes the draws reproducible.
    """
    return _ops.sample_categorical(logits, generator)


def adam_scan(
    param: Tensor,
    grads: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: float,
    beta1: float = 0.9,
    beta2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor]:
    """``T`` Adam steps on fixed gradients in one call: new ``(param, exp_avg, exp_avg_sq)``.

    Step ``t`` uses ``grads[t]`` and the step count ``step + t + 1``, exactly like ``T`` calls of
    ``torch.optim.Adam.step()`` (no weight decay, amsgrad or maximize) with those gradients. On
    CPUs with FMA (x86-64-v3 and up, where torch runs its AVX2/AVX-512 kernels) the results are
    bitwise equal to torch's CPU loop: each update rounds as torch's ops do, down to using the
    same MKL sqrt. The CUDA kernel follows torch's foreach kernels (not yet checked on a GPU).
    Functional: new tensors come back, so it needs no aliasing annotations for opcheck or
    torch.compile, and an error leaves the caller's state as it was.

    Args:
        param: ``[P]`` float32/float64 parameters, flattened.
        grads: ``[T, P]`` gradients of the same dtype, one row per step.
        exp_avg, exp_avg_sq: ``[P]`` Adam moments before the first of the ``T`` steps.
        step: Adam steps already taken (0 for fresh moments).
        lr, beta1, beta2, eps: as in ``torch.optim.Adam``.

    The inputs are not modified. Raises ``ValueError`` for a negative ``step``, a
    hyperparameter outside the range torch.optim.Adam accepts, or a NaN or infinity in the
    inputs (or reached by the update); ``RuntimeError`` for wrong shapes, dtypes or devices.
    """
    return _ops.adam_scan(
        param,
        grads,
        exp_avg,
        exp_avg_sq,
        int(step),
        float(lr),
        float(beta1),
        float(beta2),
        float(eps),
    )


def policy_sample(
    obs: Tensor,
    actor: list[Tensor],
    obs_mean: Tensor | None = None,
    obs_var: Tensor | None = None,
    obs_clip: float = 10.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample an action per row from a tanh MLP policy in one call: ``(actions, log_probs)``.

    Computes ``sample_categorical(mlp(x))`` with ``x = clamp((obs - obs_mean) / sqrt(obs_var +
    1e-8), -obs_clip, obs_clip)`` (``x = obs`` without the statistics) and ``mlp`` the layers
    ``actor = [weight_0, bias_0, weight_1, bias_1, ...]`` of ``nn.Linear`` modules with a tanh
    between them: what :class:`pylander.policies.ActorCritic` computes (bit for bit on devices
    other than the CPU; the CPU kernel's own loops and tanh round differently, by ~1e-7 in
    float32, so an action at the edge between two can rarely differ). No gradient flows.
    """
    with torch.no_grad():
        return _ops.policy_sample(obs, actor, obs_mean, obs_var, float(obs_clip), generator)


policy_sample_nograd = _ops.policy_sample
"""The op itself, for inputs that need no autograd (detached, or in ``inference_mode``): what
:func:`policy_sample` calls, without its ``no_grad`` context."""


def actor_critic_grads(
    obs: Tensor,
    actor: list[Tensor],
    critic: list[Tensor],
    actions: Tensor,
    advantages: Tensor,
    old_log_probs: Tensor,
    returns: Tensor,
    clip_coef: float,
    ent_coef: float,
    vf_coef: float,
    scale: float,
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """One minibatch's gradients for tanh MLP actor and critic, by hand, in one native call.

    The loss, with ``pg`` the summed :func:`clipped_pg_loss` (``reduction="sum"``, its old
    log-probabilities gathered from ``old_log_probs`` at ``actions``), ``H`` the mean entropy
    and ``v`` the critic's output, is::

        scale * (pg - ent_coef * B * H + vf_coef * 0.5 * sum((v - returns) ** 2))

    Args:
        obs: ``[B, obs_size]`` inputs of both networks (already normalised).
        actor, critic: ``[weight_0, bias_0, ...]`` of each network's ``nn.Linear`` layers, tanh
            between them; ``critic`` may be empty (no value loss; ``returns`` is then unused).
        actions, advantages: ``[B]`` actions taken and their advantages (constants).
        old_log_probs: ``[B, A]`` log-softmax of the policy that collected the data.
        returns: ``[B]`` the critic's regression targets.
        clip_coef, ent_coef, vf_coef, scale: as in the loss (``scale`` is usually
            ``1 / global batch size``).

    Returns:
        ``(actor_grads, critic_grads, stats)``: the gradients in the order of ``actor`` and
        ``critic``, and float64 ``stats`` = ``[pg, 0.5 * sum((v - returns) ** 2), H,
        clip fraction, sum of KL(old || new) over the rows]``, all unscaled.
    """
    with torch.no_grad():
        return _ops.actor_critic_grads(
            obs,
            actor,
            critic,
            actions,
            advantages,
            old_log_probs,
            returns,
            float(clip_coef),
            float(ent_coef),
            float(vf_coef),
            float(scale),
        )


def notebook_act(observation: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The notebook's ``PolicyNetwork.act`` on one observation: the action, a ``[1]`` int64.

    Runs the same ATen ops as :class:`pylander.reference.PolicyNetwork` (Linear, ReLU,
    ``log(softmax + 1e-9)``, ``exp``, ``torch.multinomial``) in one call, drawing from torch's
    global generator exactly as the notebook does.
    """
    with torch.no_grad():
        return _ops.notebook_act(observation, weight, bias)


# --- fake kernels: output metadata only, for FakeTensor tracing and torch.compile -------------
# The native kernels validate everything else; the one check needed here is the device, since a
# meta or fake tensor among the inputs routes the call to these kernels instead.


def _check_same_device(**tensors: Tensor | None) -> None:
    named = [(name, t) for name, t in tensors.items() if t is not None]
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise RuntimeError(
                f"pylander: `{name}` is on {t.device} but `{first_name}` is on {first.device}; "
                "move them to the same device"
            )


@torch.library.register_fake("pylander::discounted_returns")
def _discounted_returns_fake(rewards, dones, gamma, bootstrap=None):
    _check_same_device(rewards=rewards, dones=dones, bootstrap=bootstrap)
    return torch.empty_like(rewards)


@torch.library.register_fake("pylander::gae")
def _gae_fake(rewards, values, dones, last_values, gamma, lam):
    _check_same_device(rewards=rewards, values=values, dones=dones, last_values=last_values)
    return torch.empty_like(rewards)


@torch.library.register_fake("pylander::pg_loss")
def _pg_loss_fake(logits, actions, weights, reduction="mean", old_log_probs=None, clip_coef=0.0):
    _check_same_device(logits=logits, actions=actions, weights=weights, old_log_probs=old_log_probs)
    return logits.new_empty(()), logits.new_empty(()), logits.new_empty(())


@torch.library.register_fake("pylander::pg_loss_backward")
def _pg_loss_backward_fake(
    grad_loss, grad_entropy, logits, actions, weights, reduction, old_log_probs=None, clip_coef=0.0
):
    _check_same_device(logits=logits, actions=actions, weights=weights, old_log_probs=old_log_probs)
    return torch.empty_like(logits)


@torch.library.register_fake("pylander::sample_categorical")
def _sample_categorical_fake(logits, generator=None):
    batch = logits.shape[0]
    return logits.new_empty((batch,), dtype=torch.long), logits.new_empty((batch,))


@torch.library.register_fake("pylander::adam_scan")
def _adam_scan_fake(param, grads, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps):
    _check_same_device(param=param, grads=grads, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq)
    return torch.empty_like(param), torch.empty_like(exp_avg), torch.empty_like(exp_avg_sq)


@torch.library.register_fake("pylander::policy_sample")
def _policy_sample_fake(obs, actor, obs_mean, obs_var, obs_clip, generator=None):
    _check_same_device(obs=obs, obs_mean=obs_mean, obs_var=obs_var)
    batch = obs.shape[0]
    return obs.new_empty((batch,), dtype=torch.long), obs.new_empty((batch,))


@torch.library.register_fake("pylander::actor_critic_grads")
def _actor_critic_grads_fake(
    obs, actor, critic, actions, advantages, old_log_probs, returns, clip, ent, vf, scale
):
    _check_same_device(obs=obs, actions=actions, advantages=advantages, returns=returns)
    grads = [[torch.empty_like(p) for p in params] for params in (actor, critic)]
    return grads[0], grads[1], obs.new_empty((5,), dtype=torch.float64)


@torch.library.register_fake("pylander::notebook_act")
def _notebook_act_fake(observation, weight, bias):
    _check_same_device(observation=observation, weight=weight, bias=bias)
    return observation.new_empty((1,), dtype=torch.long)


# --- autograd ---------------------------------------------------------------------------------
# The scans are linear in their inputs. The gradient of a reverse scan is a forward scan with the
# same discounts, which is the reverse scan of the time-flipped input with `dones` shifted by one.


def _forward_scan(grad: Tensor, dones: Tensor, discount: float) -> Tensor:
    """x[t] = grad[t] + discount * (1 - dones[t - 1]) * x[t - 1], via the native reverse scan."""
    flipped_dones = dones.flip(0)
    shifted = torch.cat([flipped_dones[1:], torch.ones_like(flipped_dones[:1])])
    return _ops.discounted_returns(grad.flip(0).contiguous(), shifted, discount, None).flip(0)


def _returns_setup(ctx, inputs, output):
    _, dones, gamma, bootstrap = inputs
    ctx.save_for_backward(dones)
    ctx.gamma = gamma
    ctx.has_bootstrap = bootstrap is not None


def _returns_backward(ctx, grad):
    (dones,) = ctx.saved_tensors
    grad_rewards = _forward_scan(grad, dones, ctx.gamma)
    grad_bootstrap = None
    if ctx.has_bootstrap:
        grad_bootstrap = ctx.gamma * (~dones[-1]).to(grad.dtype) * grad_rewards[-1]
    return grad_rewards, None, None, grad_bootstrap


torch.library.register_autograd(
    "pylander::discounted_returns", _returns_backward, setup_context=_returns_setup
)


def _gae_setup(ctx, inputs, output):
    _, _, dones, _, gamma, lam = inputs
    ctx.save_for_backward(dones)
    ctx.gamma, ctx.lam = gamma, lam


def _gae_backward(ctx, grad):
    (dones,) = ctx.saved_tensors
    live = (~dones).to(grad.dtype)
    grad_delta = _forward_scan(grad, dones, ctx.gamma * ctx.lam)
    # V[t] enters delta[t] with -1 and delta[t - 1] with gamma * (1 - dones[t - 1]).
    grad_values = -grad_delta
    grad_values[1:] += ctx.gamma * live[:-1] * grad_delta[:-1]
    grad_last = ctx.gamma * live[-1] * grad_delta[-1]
    return grad_delta, grad_values, None, grad_last, None, None


torch.library.register_autograd("pylander::gae", _gae_backward, setup_context=_gae_setup)


def _pg_loss_setup(ctx, inputs, output):
    logits, actions, weights, reduction, old_log_probs, clip_coef = inputs
    ctx.save_for_backward(logits, actions, weights, old_log_probs)
    ctx.reduction, ctx.clip_coef = reduction, clip_coef
    ctx.mark_non_differentiable(output[2])  # the clip fraction is piecewise constant


def _pg_loss_backward(ctx, grad_loss, grad_entropy, _grad_clip_fraction):
    logits, actions, weights, old_log_probs = ctx.saved_tensors
    grad_logits = grad_weights = None
    if ctx.needs_input_grad[0]:
        grad_logits = _ops.pg_loss_backward(
            grad_loss,
            grad_entropy,
            logits,
            actions,
            weights,
            ctx.reduction,
            old_log_probs,
            ctx.clip_coef,
        )
    # The plain loss is differentiable in its weights; the clipped surrogate treats its weights
    # (advantages) and old log-probabilities as the constants they are in PPO.
    if ctx.needs_input_grad[2] and ctx.clip_coef == 0:
        scale = max(logits.shape[0], 1) if ctx.reduction == "mean" else 1
        chosen = torch.log_softmax(logits, -1).gather(1, actions.unsqueeze(1)).squeeze(1)
        grad_weights = -grad_loss * chosen / scale
    return grad_logits, None, grad_weights, None, None, None


torch.library.register_autograd(
    "pylander::pg_loss", _pg_loss_backward, setup_context=_pg_loss_setup
)


def _sample_setup(ctx, inputs, output):
    logits, _ = inputs
    actions, _ = output
    ctx.save_for_backward(logits, actions)


def _sample_backward(ctx, grad_actions, grad_log_probs):
    # d log p(a) / d logits = onehot(a) - softmax(logits); the actions are not differentiable.
    logits, actions = ctx.saved_tensors
    onehot = torch.nn.functional.one_hot(actions, logits.shape[1]).to(logits.dtype)
    return grad_log_probs.unsqueeze(1) * (onehot - torch.softmax(logits, -1)), None


torch.library.register_autograd(
    "pylander::sample_categorical", _sample_backward, setup_context=_sample_setup
)
