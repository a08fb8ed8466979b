"""REINFORCE with a baseline, batched over a vector env: the default ``--algo reinforce``.

Each iteration:

1. collect ``num_steps`` steps from ``num_envs`` envs with the native sampler (``rollout.py``);
2. compute advantages with the native scans:
   * ``baseline="value"``: a learned critic and GAE(lambda). A truncated (time-limit) episode's
     tail is bootstrapped with ``gamma * V(final observation)``, never treated as terminal;
   * ``baseline="mean"`` / ``"none"``: Monte-Carlo returns (minus their batch mean). Without a
     critic an unfinished episode's return is unknown, so steps after a column's last episode end
     are left out of the loss; use rollouts longer than an episode with these baselines;
3. optionally normalise advantages, then take ``minibatches`` Adam steps on disjoint slices of the
   batch, minimising ``pg_loss - ent_coef * entropy + vf_coef * value_loss`` (native ``pg_loss``
   forward and backward), with gradient-norm clipping and a linearly annealed learning rate.
"""

from __future__ import annotations

import math

import gymnasium as gym
import torch
from torch import Tensor

from pylander import ops
from pylander.algorithms import Iteration, NonFiniteError, check_parameters
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.policies import ActorCritic
from pylander.rollout import Rollout, RolloutCollector


class Reinforce:
    def __init__(self, config: TrainConfig, envs: gym.vector.VectorEnv, obs_size: int,
                 num_actions: int, device: torch.device, comm: Collective | None = None):
        self.config, self.device = config, device
        self.comm = comm or Collective(device)
        self.policy = ActorCritic(obs_size, num_actions, config.hidden_sizes,
                                  critic=config.baseline == "value").to(device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.learning_rate, eps=1e-5)
        # Sampling and minibatch shuffling draw from their own seeded generators, so a run is
        # reproducible and a checkpoint can restore them exactly.
        rank = self.comm.rank
        self.sample_generator = torch.Generator(device=device).manual_seed(config.seed + 7919 * rank)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 7919 * rank + 1)
        self.comm.broadcast_parameters(self.policy)
        self.collector = RolloutCollector(envs, self.policy, config.num_steps,
                                          self.sample_generator, device)
        self.updates = 0

    # --- the algorithm ---------------------------------------------------------------------

    def iterate(self, progress: float) -> Iteration:
        """Collect one rollout and update; ``progress`` in [0, 1] anneals the learning rate."""
        if self.config.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate * max(1.0 - progress, 0.0)
        rollout = self.collector.collect()
        stats = self.update(rollout)
        self.updates += 1
        return Iteration(steps=rollout.num_steps, episodes=self.collector.pop_finished(), **stats)

    def advantages(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(advantages, returns, mask)``, each ``[T, N]``; the loss uses ``mask`` steps."""
        cfg, dev = self.config, self.device
        T, N = rollout.actions.shape
        rewards = rollout.rewards.to(dev)
        terminated, truncated = rollout.terminated.to(dev), rollout.truncated.to(dev)
        valid = rollout.valid.to(dev)
        # Autoreset steps end their (empty) transition too, so nothing leaks across episodes.
        dones = terminated | truncated | ~valid
        if cfg.baseline == "value":
            with torch.no_grad():
                values = self.policy.value(rollout.obs.reshape((T + 1) * N, -1)).view(T + 1, N)
            # The final observation of an episode is stored at the step after it (autoreset).
            time_limited = truncated & ~terminated
            rewards = rewards + cfg.gamma * time_limited * values[1:]
            advantages = ops.gae(rewards, values[:T], dones, values[T], cfg.gamma, cfg.gae_lambda)
            return advantages, advantages + values[:T], valid
        returns = ops.discounted_returns(rewards, dones, cfg.gamma)
        # Steps with an episode end at or after them in their column have complete returns.
        ends_later = dones.flip(0).to(torch.int8).cummax(0).values.flip(0).bool()
        mask = valid & ends_later
        baseline = returns[mask].mean() if cfg.baseline == "mean" and mask.any() else 0.0
        return returns - baseline, returns, mask

    def update(self, rollout: Rollout) -> dict[str, float]:
        """One pass of ``minibatches`` Adam steps over the rollout.

        Losses are sums divided by the *global* sample count and gradients are summed over
        ranks, so N ranks make exactly the update one process would make on all their data.
        """
        cfg, comm = self.config, self.comm
        advantages, returns, mask = self.advantages(rollout)
        T, N = rollout.actions.shape
        index = mask.flatten().nonzero().squeeze(1)
        obs = rollout.obs[:T].reshape(T * N, -1)[index]
        actions = rollout.actions.to(self.device).flatten()[index]
        advantages, returns = advantages.flatten()[index], returns.flatten()[index]
        count, total, total_sq = comm.sum(torch.stack([
            torch.tensor(float(index.numel()), dtype=torch.float64, device=self.device),
            advantages.double().sum(), advantages.double().pow(2).sum()])).tolist()
        if count == 0:
            return {}
        if cfg.normalize_advantages and count > 1:
            mean = total / count
            std = math.sqrt(max(total_sq - count * mean * mean, 0.0) / (count - 1))
            advantages = (advantages - mean) / (std + 1e-8)

        order = torch.randperm(index.numel(), generator=self.shuffle_generator).to(self.device)
        batches = order.tensor_split(cfg.minibatches)
        global_sizes = comm.sum(torch.tensor([float(b.numel()) for b in batches], device=self.device))
        reported = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, entropy
        for batch, global_size in zip(batches, global_sizes.tolist()):
            if global_size == 0:
                continue
            policy_loss, entropy = ops.pg_loss(self.policy.logits(obs[batch]), actions[batch],
                                               advantages[batch], "sum")
            entropy = entropy * batch.numel()  # pg_loss reports the batch mean
            loss = policy_loss - cfg.ent_coef * entropy
            if self.policy.critic is not None:
                value_error = self.policy.value(obs[batch]) - returns[batch]
                loss = loss + cfg.vf_coef * 0.5 * value_error.pow(2).sum()
            loss = loss / global_size
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            comm.sum_gradients(self.policy.parameters())
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
            if not math.isfinite(grad_norm.item()):
                what = "loss" if not math.isfinite(loss.item()) else "gradient"
                raise NonFiniteError(f"non-finite {what} at update {self.updates + 1}; "
                                     "the update was not applied")
            self.optimizer.step()
            reported += torch.stack([loss.detach(), entropy.detach() / global_size]).double()
        check_parameters(self.policy, self.updates + 1)
        loss, entropy = (comm.sum(reported) / len(batches)).tolist()
        return {"loss": loss, "entropy": entropy}

    # --- trainer interface -----------------------------------------------------------------

    def logits(self, obs: Tensor) -> Tensor:
        return self.policy.logits(obs)

    def reset_envs(self, seed: int) -> None:
        self.collector.reset(seed)

    def architecture(self) -> dict:
        return {"algo": "reinforce", **self.policy.architecture()}

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sample_generator": self.sample_generator.get_state(),
            "shuffle_generator": self.shuffle_generator.get_state(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sample_generator.set_state(state["sample_generator"])
        self.shuffle_generator.set_state(state["shuffle_generator"])
        self.updates = int(state["updates"])
