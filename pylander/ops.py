"""Typed wrappers for the native operators; importing it registers their fake kernels and
autograd formulas (:mod:`pylander.op_registrations`).

The kernels live in ``csrc/`` (CPU in ``csrc/cpu``, CUDA in ``csrc/cuda``); the schemas are
declared once in ``csrc/ops.cpp``.

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
  minibatch's actor and critic gradients, each in one call (a composite kernel of ATen ops for
  any device, and plain CPU loops that take precedence there).
* ``actor_critic_forward``: the actor's log-probabilities and the critic's values of a whole
  batch, the update's forward passes (CPU loops, and a composite kernel with the module's bits).
* ``policy_greedy``: the same actor's greedy actions, for evaluation (the composite kernel gives
  the torch module's logits bit for bit; the CPU kernel is ``policy_sample``'s loops).
* ``notebook_act``: the notebook's ``PolicyNetwork.act``, on torch's global generator.
* ``clip_grad_norms_``: per-group gradient-norm clipping in place, ``clip_grad_norm_``'s
  arithmetic (its bits, except on the CPU, whose kernel sums in float64).
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


def policy_greedy(
    obs: Tensor,
    actor: list[Tensor],
    obs_mean: Tensor | None = None,
    obs_var: Tensor | None = None,
    obs_clip: float = 10.0,
) -> Tensor:
    """The greedy action of each row, ``argmax(mlp(x))`` (``x`` and ``mlp`` as in
    :func:`policy_sample`), in one call; ties go to the first action, as ``argmax`` breaks them.
    The logits are those of :meth:`pylander.policies.ActorCritic.logits`: bit for bit on devices
    other than the CPU, whose kernel (``policy_sample``'s loops) rounds differently, by ~1e-7 in
    float32, so an action at the edge between two can rarely differ. No gradient flows."""
    with torch.no_grad():
        return _ops.policy_greedy(obs, actor, obs_mean, obs_var, float(obs_clip))


policy_greedy_nograd = _ops.policy_greedy
"""The op itself, for inputs that need no autograd: :func:`policy_greedy` without ``no_grad``."""


def actor_critic_forward(
    obs: Tensor, actor: list[Tensor], critic: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """The actor's log-probabilities and the critic's values of a whole batch, in one call.

    Args:
        obs: ``[B, obs_size]`` inputs of both networks (already normalised).
        actor, critic: ``[weight_0, bias_0, ...]`` of each network's ``nn.Linear`` layers, tanh
            between them, as in :func:`actor_critic_grads`; ``critic`` may be empty.

    Returns:
        ``(log_probs, values)``: ``[B, A]`` ``log_softmax(actor(obs))`` and ``[B]``
        ``critic(obs)`` (``[0]`` without a critic); a row with a NaN input or logit comes out NaN.
        On the CPU both come from the loops of :func:`actor_critic_grads`' CPU kernel and differ
        from the module's by rounding (~1e-7 in float32); other devices give the module's bits.
        No gradient flows.
    """
    with torch.no_grad():
        return _ops.actor_critic_forward(obs, actor, critic)


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


def clip_grad_norms_(grads: list[Tensor], group_sizes: list[int], max_norm: float) -> Tensor:
    """Scale each group of ``grads`` (consecutive runs of ``group_sizes`` tensors) in place so
    that its L2 norm is at most ``max_norm``; returns the largest norm before clipping.

    Per group: ``norm = ||[||g|| for g in group]||`` and every ``g *= min(1, max_norm / (norm +
    1e-6))``, the arithmetic of ``torch.nn.utils.clip_grad_norm_``, in one call: bit for bit on
    CUDA; on the CPU up to rounding, as one float64 sum of squares per group.
    """
    with torch.no_grad():
        return _ops.clip_grad_norms_(grads, list(group_sizes), float(max_norm))


# The fake kernels and autograd formulas (pylander/op_registrations.py).
from pylander import op_registrations  # noqa: E402, F401
