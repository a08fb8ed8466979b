"""Pure-Python reference implementations, written as plainly as possible.

Two parts:

1. The native operators of :mod:`pylander.ops`, with the same signatures, as explicit Python
   loops over time (like the notebook). The parity tests compare every native op against these.
2. The seed notebook's REINFORCE (``../shared/seed/reinforce_notebook.txt``): ``PolicyNetwork``,
   ``run_episode``, ``discount_rewards`` and ``update``, transcribed faithfully. The only changes:
   the environment is ``LunarLander-v3`` (gymnasium 1.x removed v2), and ``run_episode`` stops
   on truncation as well as termination (the notebook loops forever on a truncated episode).
   ``--algo notebook`` in :mod:`pylander.algorithms.notebook` must match this code exactly.
"""

from __future__ import annotations

import gymnasium as gym
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

# --- 1. reference operators -------------------------------------------------------------------


def discounted_returns(
    rewards: Tensor, dones: Tensor, gamma: float, bootstrap: Tensor | None = None
) -> Tensor:
    """Reference for :func:`pylander.ops.discounted_returns`: one Python loop per env column."""
    T, N = rewards.shape
    out = torch.zeros_like(rewards)
    for n in range(N):
        R = float(bootstrap[n]) if bootstrap is not None else 0.0
        for t in reversed(range(T)):
            if dones[t, n]:
                R = 0.0
            R = float(rewards[t, n]) + gamma * R
            out[t, n] = R
    return out


def gae(
    rewards: Tensor, values: Tensor, dones: Tensor, last_values: Tensor, gamma: float, lam: float
) -> Tensor:
    """Reference for :func:`pylander.ops.gae`."""
    T, N = rewards.shape
    out = torch.zeros_like(rewards)
    for n in range(N):
        next_value = float(last_values[n])
        advantage = 0.0
        for t in reversed(range(T)):
            live = 0.0 if dones[t, n] else 1.0
            delta = float(rewards[t, n]) + gamma * live * next_value - float(values[t, n])
            advantage = delta + gamma * lam * live * advantage
            out[t, n] = advantage
            next_value = float(values[t, n])
    return out


def pg_loss(
    logits: Tensor, actions: Tensor, weights: Tensor, reduction: str = "mean"
) -> tuple[Tensor, Tensor]:
    """Reference for :func:`pylander.ops.pg_loss`, differentiable by ordinary autograd."""
    log_probs = torch.log_softmax(logits, dim=-1)
    chosen = log_probs.gather(1, actions.unsqueeze(1)).squeeze(1)
    losses = -weights * chosen
    batch = logits.shape[0]
    loss = losses.sum() / (max(batch, 1) if reduction == "mean" else 1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).sum() / max(batch, 1)
    return loss, entropy


def clipped_pg_loss(
    logits: Tensor,
    actions: Tensor,
    weights: Tensor,
    old_log_probs: Tensor,
    clip_coef: float,
    reduction: str = "mean",
) -> tuple[Tensor, Tensor, Tensor]:
    """Reference for :func:`pylander.ops.clipped_pg_loss`: PPO's clipped surrogate, as written
    in the PPO paper, differentiable by ordinary autograd in ``logits``."""
    if clip_coef == 0:
        return (*pg_loss(logits, actions, weights, reduction), logits.new_zeros(()))
    _, entropy = pg_loss(logits, actions, weights, reduction)
    weights, old_log_probs = weights.detach(), old_log_probs.detach()  # constants in PPO
    chosen = torch.log_softmax(logits, dim=-1).gather(1, actions.unsqueeze(1)).squeeze(1)
    ratio = torch.exp(chosen - old_log_probs)
    clipped_ratio = ratio.clamp(1 - clip_coef, 1 + clip_coef)
    surrogate = torch.minimum(ratio * weights, clipped_ratio * weights)
    batch = logits.shape[0]
    loss = -surrogate.sum() / (max(batch, 1) if reduction == "mean" else 1)
    # The rows whose clipped term wins the min: they add nothing to the gradient.
    clipped = ((ratio > 1 + clip_coef) & (weights > 0)) | ((ratio < 1 - clip_coef) & (weights < 0))
    clip_fraction = clipped.sum().to(logits.dtype) / max(batch, 1)
    return loss, entropy, clip_fraction


def sample_categorical(
    logits: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Reference for :func:`pylander.ops.sample_categorical`: same distribution, other draws."""
    probs = torch.softmax(logits.double(), dim=-1)
    actions = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    log_probs = torch.log_softmax(logits, dim=-1).gather(1, actions.unsqueeze(1)).squeeze(1)
    return actions, log_probs


# --- 2. the seed notebook, transcribed ----------------------------------------------------------

ENV_ID = "LunarLander-v3"  # the notebook's "LunarLander-v2" no longer exists in gymnasium 1.x
gamma = 0.99


class PolicyNetwork(nn.Module):
    """The notebook's policy: one Linear layer, ReLU, then log of softmax (+1e-9)."""

    def __init__(self, shape):
        super().__init__()
        self.w = nn.Linear(shape[0], shape[1])
        self.layer = nn.Sequential(self.w, nn.ReLU())
        self.optimizer = torch.optim.Adam(self.parameters(), lr=1e-3)

    def forward(self, x):
        logits = self.layer(x)
        return torch.log(F.softmax(logits, dim=-1) + 1e-9)

    def act(self, state):
        state = torch.from_numpy(state).float().unsqueeze(0)
        log_probs = self.forward(state).squeeze(0)
        probs = torch.exp(log_probs)
        action = torch.multinomial(probs, 1)
        return action.item(), log_probs[action]


def run_episode(model, env):
    """Play one episode; the notebook stopped only on termination, this also on truncation."""
    observation, _ = env.reset()
    step = 0

    observations = []
    actions = []
    rewards = []
    log_probs = []

    while True:
        action, _log_probs = model.act(observation)
        observation, reward, terminated, truncated, info = env.step(action)

        observations.append(observation)
        actions.append(action)
        rewards.append(reward)
        log_probs.append(_log_probs)

        if terminated or truncated:
            observation = env.reset()
            break
        step += 1

    rewards = torch.tensor(rewards)

    return rewards, log_probs


def discount_rewards(rewards, gamma):
    discounted_rewards = torch.zeros_like(rewards)
    R = 0
    for t in reversed(range(len(rewards))):
        R = R * gamma + rewards[t]
        discounted_rewards[t] = R
    return discounted_rewards


def update(model, log_probs, d_rewards, alpha=0.01):
    for t, (log_prob, reward) in enumerate(zip(log_probs, d_rewards.tolist())):
        model.optimizer.zero_grad()  # reset the gradients
        log_prob.backward()  # compute the gradients for each log pi(A_t, S_t, theta)
        for param in model.parameters():
            if param.grad is not None:
                param.grad = param.grad * reward * gamma**t * alpha  # scale by the return
                param.grad = param.grad * -1.0  # flip the gradients (maximize the reward)
        model.optimizer.step()  # update the weights using the gradients


def make_env(render_mode: str | None = None) -> gym.Env:
    """The notebook's environment, under its gymnasium 1.x name."""
    return gym.make(ENV_ID, render_mode=render_mode)
