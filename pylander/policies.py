"""Policies: the categorical MLP actor with an optional critic used by ``--algo reinforce``.

The notebook's one-layer network lives in :mod:`pylander.reference` (``PolicyNetwork``), so that
``--algo notebook`` runs the very same class.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pylander import ops
from pylander.threads import one_thread


def mlp(sizes: list[int], out_gain: float) -> nn.Sequential:
    """tanh MLP with orthogonal init; a small last-layer gain keeps the first policy near uniform."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        with one_thread():
            nn.init.orthogonal_(linear.weight, out_gain if last else math.sqrt(2))
        nn.init.zeros_(linear.bias)
        layers.append(linear)
        if not last:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


class ObsNormalizer(nn.Module):
    """Standardises observations with a running mean and variance over everything seen so far,
    clipped to +-``clip``. Its statistics are buffers, so checkpoints, evaluation and export all
    apply the same transform the policy was trained with."""

    def __init__(self, obs_size: int, clip: float = 10.0):
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(obs_size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(obs_size, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, obs: Tensor) -> Tensor:
        scale = torch.rsqrt(self.var + 1e-8).to(obs.dtype)
        return ((obs - self.mean.to(obs.dtype)) * scale).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def merge(self, count: float, mean: Tensor, var: Tensor) -> None:
        """Fold in the statistics of a new batch (Chan et al.'s parallel update)."""
        total = self.count + count
        delta = mean - self.mean
        self.var.copy_(
            (self.var * self.count + var * count + delta.pow(2) * self.count * count / total)
            / total
        )
        self.mean.add_(delta * count / total)
        self.count.copy_(total)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (sharing a trunk made LunarLander less stable).

    The critic is built only for ``baseline="value"``.
    """

    def __init__(
        self,
        obs_size: int,
        num_actions: int,
        hidden_sizes: list[int],
        critic: bool,
        normalize_obs: bool = False,
    ):
        super().__init__()
        self.obs_size, self.num_actions = obs_size, num_actions
        self.hidden_sizes = list(hidden_sizes)
        self.actor = mlp([obs_size, *hidden_sizes, num_actions], out_gain=0.01)
        self.critic = mlp([obs_size, *hidden_sizes, 1], out_gain=1.0) if critic else None
        self.normalizer = ObsNormalizer(obs_size) if normalize_obs else None

    def normalize(self, obs: Tensor) -> Tensor:
        """The networks' input: ``obs`` standardised by the running statistics, if kept."""
        return obs if self.normalizer is None else self.normalizer(obs)

    def logits(self, obs: Tensor) -> Tensor:
        return self.actor(self.normalize(obs))

    forward = logits  # policy(obs) gives the logits, as every algorithm's policy does

    def value(self, obs: Tensor) -> Tensor:
        if self.critic is None:
            raise RuntimeError("this policy was built without a critic (baseline != 'value')")
        return self.critic(self.normalize(obs)).squeeze(-1)

    def actor_parameters(self) -> list[Tensor]:
        """The actor's ``[weight, bias]`` of each layer in turn, as the native ops take them."""
        return list(self.actor.parameters())

    def critic_parameters(self) -> list[Tensor]:
        """The critic's ``[weight, bias]`` of each layer in turn; empty without a critic."""
        return [] if self.critic is None else list(self.critic.parameters())

    def greedy(self) -> GreedyActor:
        """The greedy actions (argmax of :meth:`logits`) as one native call per batch, with the
        parameters looked up once: what evaluation plays."""
        return GreedyActor(self)

    def act(self, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Sample actions ``[B]`` for ``obs`` ``[B, obs_size]``: normalisation, the actor and the
        sampler in one native call (``ops.policy_sample``), which computes what ``logits`` does
        (up to rounding on the CPU)."""
        return self.sampler(generator)(obs)

    def sampler(self, generator: torch.Generator | None = None) -> ActionSampler:
        """:meth:`act` with the parameters looked up once, for a rollout's many steps."""
        return ActionSampler(self, generator)

    def architecture(self) -> dict:
        """What a checkpoint must match to be loaded into this policy."""
        return {
            "obs_size": self.obs_size,
            "num_actions": self.num_actions,
            "hidden_sizes": self.hidden_sizes,
            "critic": self.critic is not None,
            # Only when on, so that checkpoints from before the option still match.
            **({"normalize_obs": True} if self.normalizer is not None else {}),
        }


class ActionSampler:
    """``ActorCritic.act`` bound to the policy's parameters, looked up once (through the modules
    that cost about a third of a 16-env step's inference). It sees in-place updates of the
    parameters (optimizer steps, ``load_state_dict``), not parameters replaced by new tensors."""

    def __init__(self, policy: ActorCritic, generator: torch.Generator | None = None):
        stats = policy.normalizer
        self.mean, self.var = (None, None) if stats is None else (stats.mean, stats.var)
        self.clip = 0.0 if stats is None else stats.clip
        # Detached, the parameters share storage but ask for no autograd: no no_grad() per call.
        self.actor = [p.detach() for p in policy.actor_parameters()]
        self.generator = generator

    def __call__(self, obs: Tensor) -> Tensor:
        """Actions ``[B]`` for ``obs`` ``[B, obs_size]``."""
        return ops.policy_sample_nograd(
            obs, self.actor, self.mean, self.var, self.clip, self.generator
        )[0]


class GreedyActor(ActionSampler):
    """``ActorCritic``'s greedy actions, ``ops.policy_greedy``, bound to its parameters as
    :class:`ActionSampler` is (in-place updates are seen, replaced tensors are not)."""

    def __call__(self, obs: Tensor) -> Tensor:
        """Actions ``[B]`` for ``obs`` ``[B, obs_size]``."""
        return ops.policy_greedy_nograd(obs, self.actor, self.mean, self.var, self.clip)
