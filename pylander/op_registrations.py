"""The native operators' registrations with :mod:`torch.library` (imported by
:mod:`pylander.ops`):

* fake (meta) kernels, so the ops work under ``torch.compile`` and FakeTensor tracing;
* autograd formulas, so gradients flow through every op that has one.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ops = torch.ops.pylander


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


@torch.library.register_fake("pylander::policy_greedy")
def _policy_greedy_fake(obs, actor, obs_mean, obs_var, obs_clip):
    _check_same_device(obs=obs, obs_mean=obs_mean, obs_var=obs_var)
    return obs.new_empty((obs.shape[0],), dtype=torch.long)


@torch.library.register_fake("pylander::actor_critic_forward")
def _actor_critic_forward_fake(obs, actor, critic):
    params = {f"actor[{i}]": p for i, p in enumerate(actor)}
    _check_same_device(obs=obs, **params, **{f"critic[{i}]": p for i, p in enumerate(critic)})
    values = obs.shape[0] if critic else 0
    return obs.new_empty((obs.shape[0], actor[-2].shape[0])), obs.new_empty((values,))


@torch.library.register_fake("pylander::actor_critic_grads")
def _actor_critic_grads_fake(
    obs, actor, critic, actions, advantages, old_log_probs, returns, clip, ent, vf, scale
):
    _check_same_device(obs=obs, actions=actions, advantages=advantages, returns=returns)
    grads = [[torch.empty_like(p) for p in params] for params in (actor, critic)]
    return grads[0], grads[1], obs.new_empty((5,), dtype=torch.float64)


@torch.library.register_fake("pylander::clip_grad_norms_")
def _clip_grad_norms_fake(grads, group_sizes, max_norm):
    _check_same_device(**{f"grads[{i}]": g for i, g in enumerate(grads)})
    return grads[0].new_empty(())


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
