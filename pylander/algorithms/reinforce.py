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
        # reproducible and a checkpoint can restore them exactly. Sampling differs per rank (and
        # with several ranks is reseeded with the envs, see reset_envs); shuffling is the same on
        # every rank, which shuffles the global batch (see update).
        rank = self.comm.rank
        self.sample_generator = torch.Generator(device=device).manual_seed(config.seed + 7919 * rank)
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1)
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
        rewards = rollout.rewards.to(dev) * cfg.reward_scale
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
        baseline = 0.0
        if cfg.baseline == "mean" and self.comm.active:  # the mean over every rank's batch
            total, count = self.comm.sum(torch.stack(
                [returns[mask].double().sum(), mask.sum().double()])).tolist()
            baseline = total / count if count else 0.0
        elif cfg.baseline == "mean" and mask.any():
            baseline = returns[mask].mean()
        return returns - baseline, returns, mask

    def update(self, rollout: Rollout) -> dict[str, float]:
        """One pass of ``minibatches`` Adam steps over the rollout.

        Losses are sums divided by the *global* sample count and gradients are summed over
        ranks, so N ranks with E envs each make the update one process would make with N * E
        envs on the same episodes (up to float summation order; ``tests/test_distributed.py``).
        """
        cfg, comm = self.config, self.comm
        advantages, returns, mask = self.advantages(rollout)
        T, N = rollout.actions.shape
        index = mask.flatten().nonzero().squeeze(1)
        obs = rollout.obs[:T].reshape(T * N, -1)
        actions = rollout.actions.to(self.device).flatten()
        advantages, returns = advantages.flatten(), returns.flatten()
        count, total, total_sq = comm.sum(torch.stack([
            torch.tensor(float(index.numel()), dtype=torch.float64, device=self.device),
            advantages[index].double().sum(), advantages[index].double().pow(2).sum()])).tolist()
        if count == 0:
            return {}
        if cfg.normalize_advantages and count > 1:
            mean = total / count
            std = math.sqrt(max(total_sq - count * mean * mean, 0.0) / (count - 1))
            advantages = (advantages - mean) / (std + 1e-8)

        # Minibatches: every rank shuffles the same global list of loss steps (those of the
        # [T, N * ranks] batch, rank r holding columns r*N ... r*N + N-1) and keeps its own steps
        # of each slice, so the ranks' parts of minibatch b are exactly one process's minibatch b.
        # With one process this is a plain shuffle of ``index``.
        columns = N * comm.world_size
        global_index = comm.gather_columns(mask).flatten().nonzero().squeeze(1).cpu()
        batches = []
        for _ in range(cfg.epochs):
            order = global_index[torch.randperm(global_index.numel(), generator=self.shuffle_generator)]
            step, column = order // columns, order % columns - N * comm.rank
            mine = (column >= 0) & (column < N)
            batches += [part[keep].to(self.device)
                        for part, keep in zip((step * N + column).tensor_split(cfg.minibatches),
                                              mine.tensor_split(cfg.minibatches))]
        global_sizes = comm.sum(torch.tensor([float(b.numel()) for b in batches], device=self.device))
        reported = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, entropy
        if cfg.target_kl > 0:
            with torch.no_grad():
                old_log_probs = torch.log_softmax(self.policy.logits(obs), -1)
        steps_taken = 0
        for step, (batch, global_size) in enumerate(zip(batches, global_sizes.tolist())):
            if global_size == 0:
                continue
            logits = self.policy.logits(obs[batch])
            if cfg.target_kl > 0 and step > 0 and self._kl(old_log_probs[batch], logits, global_size) > cfg.target_kl:
                break  # the policy moved far from the one that collected the data
            steps_taken += 1
            policy_loss, entropy = ops.pg_loss(logits, actions[batch], advantages[batch], "sum")
            entropy = entropy * batch.numel()  # pg_loss reports the batch mean
            loss = policy_loss - cfg.ent_coef * entropy
            if self.policy.critic is not None:
                value_error = self.policy.value(obs[batch]) - returns[batch]
                loss = loss + cfg.vf_coef * 0.5 * value_error.pow(2).sum()
            loss = loss / global_size
            self.optimizer.zero_grad(set_to_none=False)
            loss.backward()
            comm.sum_gradients(self.policy.parameters())
            grad_norm = self.clip_gradients()
            if not math.isfinite(grad_norm.item()):
                what = "loss" if not math.isfinite(loss.item()) else "gradient"
                raise NonFiniteError(f"non-finite {what} at update {self.updates + 1}; "
                                     "the update was not applied")
            self.optimizer.step()
            reported += torch.stack([loss.detach(), entropy.detach() / global_size]).double()
        check_parameters(self.policy, self.updates + 1)
        loss, entropy = (comm.sum(reported) / max(steps_taken, 1)).tolist()
        return {"loss": loss, "entropy": entropy}

    def _kl(self, old_log_probs: Tensor, logits: Tensor, global_size: float) -> float:
        """Mean KL(old policy || current policy) over a minibatch, across all ranks."""
        with torch.no_grad():
            new_log_probs = torch.log_softmax(logits, -1)
            kl = (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum()
        return self.comm.sum(kl).item() / global_size

    def clip_gradients(self) -> Tensor:
        """Clip the actor's and the critic's gradients separately; returns the larger norm.

        Jointly, the critic's gradient (regressing returns in the hundreds) dominates the norm
        and clipping would shrink the actor's step to almost nothing.
        """
        norms = [torch.nn.utils.clip_grad_norm_(net.parameters(), self.config.max_grad_norm)
                 for net in (self.policy.actor, self.policy.critic) if net is not None]
        return torch.stack(norms).max()

    # --- trainer interface -----------------------------------------------------------------

    def logits(self, obs: Tensor) -> Tensor:
        return self.policy.logits(obs)

    def reset_envs(self, seed: int) -> None:
        """Fresh episodes from ``seed`` (the trainer derives it from the run's seed, the update and
        the rank). With several ranks the sampling stream restarts from it too, so a checkpoint
        (written by rank 0) needs no other rank's generator state to resume exactly."""
        self.collector.reset(seed)
        if self.comm.world_size > 1:
            self.sample_generator.manual_seed(seed)

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
