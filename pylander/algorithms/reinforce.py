"""REINFORCE with a baseline, batched over a vector env: the default ``--algo reinforce``.

Each iteration:

1. collect ``num_steps`` steps from ``num_envs`` envs, one native ``policy_sample`` call per
   step (``rollout.py``), by default in ``rollout_workers`` worker processes that each step a
   share of the envs (``pipeline.py``; with ``collect_ahead`` they collect the next rollout
   during this update);
2. compute advantages with the native scans:
   * ``baseline="value"``: a learned critic and GAE(lambda). A truncated (time-limit) episode's
     tail is bootstrapped with ``gamma * V(final observation)``, never treated as terminal;
   * ``baseline="mean"`` / ``"none"``: Monte-Carlo returns (minus their batch mean). Without a
     critic an unfinished episode's return is unknown, so steps after a column's last episode end
     are left out of the loss; use rollouts longer than an episode with these baselines;
3. optionally normalise advantages, then take ``epochs`` passes of ``minibatches`` Adam steps on
   disjoint slices of the batch, minimising ``pg_loss - ent_coef * entropy + vf_coef *
   value_loss`` (loss and gradients in one native ``actor_critic_grads`` call per minibatch,
   Adam in one fused kernel call), with gradient-norm clipping and a
   linearly annealed learning rate. The later passes reuse slightly stale data: ``target_kl``
   ends the update once the policy has moved that far, and ``clip_coef`` > 0 weights each
   advantage by the importance ratio and drops it once the ratio leaves ``[1 - eps, 1 + eps]``
   in its direction, which makes the native loss's gradient exactly PPO's clipped surrogate.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gymnasium as gym
import torch
from torch import Tensor, nn

from pylander import ops
from pylander.algorithms import Iteration, NonFiniteError, check_parameters
from pylander.algorithms.fused_adam import FusedAdamStep
from pylander.config import TrainConfig
from pylander.distributed import Collective
from pylander.envs import check_spaces, make_vector_env
from pylander.pipeline import PipelinedCollector
from pylander.policies import ActorCritic
from pylander.rollout import Rollout, RolloutCollector


class Reinforce:
    name = "reinforce"

    def __init__(
        self,
        config: TrainConfig,
        envs: gym.vector.VectorEnv | Callable[[int], gym.vector.VectorEnv],
        obs_size: int,
        num_actions: int,
        device: torch.device,
        comm: Collective | None = None,
    ):
        self.config, self.device = config, device
        self.comm = comm or Collective(device)
        self.policy = ActorCritic(
            obs_size,
            num_actions,
            config.hidden_sizes,
            critic=config.baseline == "value",
            normalize_obs=config.normalize_obs,
        ).to(device)
        # fused: one kernel for all parameters instead of ~10 small ops each (CPU and CUDA).
        self.optimizer = torch.optim.Adam(
            self.policy.parameters(), lr=config.learning_rate, eps=1e-5, fused=True
        )
        self.adam = FusedAdamStep(self.optimizer)
        # Sampling and minibatch shuffling draw from their own seeded generators, so a run is
        # reproducible and a checkpoint can restore them exactly. Sampling differs per rank (and
        # with several ranks is reseeded with the envs, see reset_envs); shuffling is the same on
        # every rank, which shuffles the global batch (Collective.minibatches).
        rank = self.comm.rank
        self.sample_generator = torch.Generator(device=device).manual_seed(
            config.seed + 7919 * rank
        )
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1)
        self.comm.broadcast_parameters(self.policy)
        # envs, or (rollout workers, the default) what makes each worker process's share of them.
        self.pipelined = not isinstance(envs, gym.vector.VectorEnv)
        if self.pipelined:
            self.envs = None
            self.collector = PipelinedCollector(
                envs,
                self.policy,
                config.num_envs,
                config.num_steps,
                device,
                workers=config.rollout_workers,
            )
        else:
            self.envs = envs
            self.collector = RolloutCollector(
                envs, self.policy, config.num_steps, self.sample_generator, device
            )
        self.updates = 0

    @classmethod
    def build(cls, config: TrainConfig, device: torch.device, comm: Collective) -> Reinforce:
        def make_envs(count: int) -> gym.vector.VectorEnv:
            return make_vector_env(
                config.env_id, count, config.vector, config.env_kwargs, config.env_backend
            )

        if config.rollout_workers:  # the worker processes make their own; one tells the spaces
            probe = make_envs(1)
            try:
                spaces = check_spaces(probe, config.env_id)
            finally:
                probe.close()
            return cls(config, make_envs, *spaces, device, comm)
        envs = make_envs(config.num_envs)
        try:
            return cls(config, envs, *check_spaces(envs, config.env_id), device, comm)
        except BaseException:
            envs.close()
            raise

    @staticmethod
    def policy_from_state(architecture: dict, state: dict) -> nn.Module:
        policy = ActorCritic(
            architecture["obs_size"],
            architecture["num_actions"],
            architecture["hidden_sizes"],
            architecture["critic"],
            architecture.get("normalize_obs", False),
        )
        policy.load_state_dict(state["policy"])
        return policy

    # --- the algorithm ---------------------------------------------------------------------

    def iterate(self, progress: float) -> Iteration:
        """Collect one rollout and update; ``progress`` in [0, 1] anneals the learning rate."""
        if self.config.anneal_lr:
            for group in self.optimizer.param_groups:
                group["lr"] = self.config.learning_rate * max(1.0 - progress, 0.0)
        behaviour_log_probs = None
        if self.pipelined:
            rollout = self.collector.collect(self.policy)
            if self.config.collect_ahead:  # read before start() replaces the acting snapshot
                behaviour_log_probs = self.collector.behaviour_log_probs(rollout)
        else:
            rollout = self.collector.collect()
        if self.policy.normalizer is not None:
            self.update_obs_statistics(rollout.obs[:-1])
        # --collect-ahead: the workers collect the next rollout during this update, except where
        # the trainer will restart the episodes after it (every checkpoint), which would discard it.
        resets = (self.updates + 1) % self.config.checkpoint_interval == 0
        if self.pipelined and self.config.collect_ahead and not resets:
            self.collector.start(self.policy)
        metrics = self.update(rollout, behaviour_log_probs)
        self.updates += 1
        return Iteration(rollout.num_steps, self.collector.pop_finished(), metrics)

    def advantages(
        self, rollout: Rollout, values: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(advantages, returns, mask)``, each ``[T, N]``; the loss uses ``mask`` steps.

        ``values``: the critic's ``[T + 1, N]`` values of ``rollout.obs``, when already computed
        (``baseline="value"``)."""
        cfg, dev = self.config, self.device
        T, N = rollout.actions.shape
        rewards = rollout.rewards.to(dev) * cfg.reward_scale
        terminated, truncated = rollout.terminated.to(dev), rollout.truncated.to(dev)
        valid = rollout.valid.to(dev)
        # Autoreset steps end their (empty) transition too, so nothing leaks across episodes.
        dones = terminated | truncated | ~valid
        if cfg.baseline == "value":
            if values is None:
                inputs = self.policy.normalize(rollout.obs.reshape((T + 1) * N, -1))
                values = self._forward(inputs)[1].view(T + 1, N)
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
        if cfg.baseline == "mean":  # the mean over every rank's batch
            count, mean, _ = self.comm.moments(returns[mask])
            baseline = mean if count else 0.0
        return returns - baseline, returns, mask

    def update(
        self, rollout: Rollout, behaviour_log_probs: Tensor | None = None
    ) -> dict[str, float]:
        """``epochs`` passes of ``minibatches`` Adam steps over the rollout, ended early once the
        policy has moved ``target_kl`` away from the one that collected it.

        ``behaviour_log_probs`` (``[T * N, A]``): the log-probabilities of the policy that
        collected the rollout, when that was not the current one (``--collect-ahead``). The update is
        then decoupled PPO (Hilton et al., 2021, "Batch size-invariance for policy
        optimization"): the ratio, its clipping and the KL stop are taken against the policy at
        the start of the update, exactly as without lag, and each advantage is weighted by
        ``pi_start(a|s) / pi_behaviour(a|s)``, truncated at 1 as IMPALA's V-trace does, which
        corrects for the data coming from the older policy.

        Losses are sums divided by the *global* sample count and gradients are summed over
        ranks (:class:`Collective`), so N ranks with E envs each make the update one process
        would make with N * E envs on the same episodes.
        """
        cfg, comm = self.config, self.comm
        T, N = rollout.actions.shape
        # One native forward pass over every observation, the last included (the critic's
        # bootstrap); the normaliser's statistics are fixed for the whole update.
        with torch.no_grad():
            inputs = self.policy.normalize(rollout.obs.reshape((T + 1) * N, -1))
        log_probs, all_values = self._forward(inputs)
        critic_values = all_values.view(T + 1, N) if self.policy.critic is not None else None
        advantages, returns, mask = self.advantages(rollout, critic_values)
        inputs, old_log_probs = inputs[: T * N], log_probs[: T * N]
        actions = rollout.actions.to(self.device).flatten()
        advantages, returns = advantages.flatten(), returns.flatten()
        values = returns - advantages  # the critic's estimates (before normalisation)
        index = mask.flatten().nonzero().squeeze(1)
        count, mean, std = comm.moments(advantages[index])
        if count == 0:
            return {}
        if cfg.normalize_advantages and count > 1:
            advantages = (advantages - mean) / (std + 1e-8)
        batches = comm.minibatches(mask, cfg.epochs, cfg.minibatches, self.shuffle_generator)
        weights = None
        if behaviour_log_probs is not None:
            weights = self._behaviour_weights(old_log_probs, behaviour_log_probs, actions)
            advantages = advantages * weights
        samples = self._gather(batches, inputs, actions, advantages, old_log_probs, returns)

        actor, critic = self.policy.actor_parameters(), self.policy.critic_parameters()
        group_sizes = [len(params) for params in (actor, critic) if params]
        taken: list[tuple[Tensor, Tensor, float, int]] = []  # (stats, grad norm, size, rows)
        for step, (*batch, global_size) in enumerate(samples):
            if global_size == 0:
                continue
            # The loss, its statistics and every gradient in one native call (the clipped
            # surrogate when clip_coef > 0: each advantage weighted by the ratio pi / pi_old, and
            # by 0 once the ratio has left [1 - eps, 1 + eps] in its direction).
            actor_grads, critic_grads, stats = ops.actor_critic_grads(
                batch[0], actor, critic, *batch[1:], cfg.clip_coef, cfg.ent_coef,
                cfg.vf_coef, 1.0 / global_size,
            )  # fmt: skip
            kl = stats[4]
            if cfg.target_kl > 0 and step > 0 and comm.sum(kl).item() / global_size > cfg.target_kl:
                break  # the policy moved far from the one that collected the data
            for param, grad in zip(actor + critic, actor_grads + critic_grads):
                param.grad = grad
            comm.sum_gradients(actor + critic)
            # Each net's gradient is clipped on its own: jointly, the critic's (regressing returns
            # in the hundreds) would dominate the norm and shrink the actor's step to nothing.
            grad_norm = ops.clip_grad_norms_(
                [p.grad for p in actor + critic], group_sizes, cfg.max_grad_norm
            )
            if not math.isfinite(grad_norm.item()):
                what = "loss" if not math.isfinite(stats.sum().item()) else "gradient"
                raise NonFiniteError(
                    f"non-finite {what} at update {self.updates + 1}; the update was not applied"
                )
            self.adam.step()
            taken.append((stats, grad_norm, global_size, len(batch[1])))
        check_parameters(self.policy, self.updates + 1)
        policy_loss, value_loss, entropy, clip_fraction, grad_norm = self._mean_statistics(taken)
        new_log_probs = ops.actor_critic_forward(inputs[index], actor, [])[0]
        metrics = {
            "policy_loss": policy_loss,
            "entropy": entropy,
            "grad_norm": grad_norm,
            "approx_kl": self._kl(old_log_probs[index], new_log_probs, count),
            "minibatches": len(taken),
            "clip_fraction": clip_fraction,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
        }
        if weights is not None:  # how far the acting policy lagged: 1 is not at all
            metrics["behaviour_weight"] = comm.moments(weights[index])[1]
        if self.policy.critic is not None:
            metrics["value_loss"] = value_loss
            metrics["explained_variance"] = self._explained_variance(values[index], returns[index])
        return metrics

    def _mean_statistics(self, taken: list[tuple[Tensor, Tensor, float, int]]) -> list[float]:
        """Policy loss, value loss, entropy, clip fraction and grad norm per sample, averaged over
        the minibatches taken (all ranks' samples; every rank has the same summed gradient, so
        its norm counts once)."""
        if not taken:
            return [0.0] * 5
        world = self.comm.world_size
        rows = torch.tensor(
            [[1.0, 1.0, n, n, size / world] for _, _, size, n in taken], dtype=torch.float64
        )
        sizes = torch.tensor([size for _, _, size, _ in taken], dtype=torch.float64)
        per_step = torch.stack(
            [torch.cat([stats[:4], norm.double().view(1)]) for stats, norm, _, _ in taken]
        )
        totals = (per_step * rows.to(per_step.device) / sizes.to(per_step.device)[:, None]).sum(0)
        return (self.comm.sum(totals) / len(taken)).tolist()

    @staticmethod
    def _behaviour_weights(start: Tensor, behaviour: Tensor, actions: Tensor) -> Tensor:
        """``min(1, pi_start(a|s) / pi_behaviour(a|s))`` of each step's action (see ``update``)."""
        taken = actions.unsqueeze(1)
        log_ratio = start.gather(1, taken) - behaviour.gather(1, taken)
        return log_ratio.squeeze(1).exp().clamp(max=1.0)

    @staticmethod
    def _gather(batches: list[tuple[Tensor, float]], *tensors: Tensor) -> list[tuple]:
        """Each minibatch's rows of each of ``tensors``, and its global size: one gather per
        tensor for the whole update (then views), instead of one per tensor per minibatch."""
        sizes = [len(batch) for batch, _ in batches]
        index = torch.cat([batch for batch, _ in batches])
        parts = [tensor[index].split(sizes) for tensor in tensors]
        return list(zip(*parts, [global_size for _, global_size in batches]))

    def update_obs_statistics(self, obs: Tensor) -> None:
        """Fold this rollout's observations (all ranks') into the running normalisation."""
        flat = obs.reshape(-1, obs.shape[-1]).double()
        count = torch.tensor([float(flat.shape[0])], dtype=torch.float64, device=flat.device)
        total = self.comm.sum(torch.cat([count, flat.sum(0), flat.pow(2).sum(0)]))
        n, sums, squares = total[0], total[1 : 1 + flat.shape[1]], total[1 + flat.shape[1] :]
        mean = sums / n
        self.policy.normalizer.merge(float(n), mean, (squares / n - mean.pow(2)).clamp_min(0.0))

    def _forward(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """The actor's log-probabilities and the critic's values of normalised ``inputs``."""
        return ops.actor_critic_forward(
            inputs, self.policy.actor_parameters(), self.policy.critic_parameters()
        )

    def _kl(self, old_log_probs: Tensor, new_log_probs: Tensor, global_size: float) -> float:
        """Mean KL(old policy || current policy) over a batch, across all ranks."""
        kl = (old_log_probs.exp() * (old_log_probs - new_log_probs)).sum()
        return self.comm.sum(kl).item() / global_size

    def _explained_variance(self, values: Tensor, returns: Tensor) -> float:
        """1 - Var(returns - values) / Var(returns) over the batch: 1 is a perfect critic, 0 no
        better than a constant."""
        _, _, std_returns = self.comm.moments(returns)
        _, _, std_error = self.comm.moments(returns - values)
        return 1.0 - (std_error / std_returns) ** 2 if std_returns > 0 else math.nan

    # --- trainer interface -----------------------------------------------------------------

    def reset_envs(self, seed: int) -> None:
        """Fresh episodes from ``seed`` (the trainer derives it from the run's seed, the update and
        the rank). With several ranks the sampling stream restarts from it too, so a checkpoint
        (written by rank 0) needs no other rank's generator state to resume exactly."""
        self.collector.reset(seed)  # rollout workers reseed their own sampling generators
        if self.comm.world_size > 1:
            self.sample_generator.manual_seed(seed)

    def architecture(self) -> dict:
        return {"algo": self.name, **self.policy.architecture()}

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

    def close(self) -> None:
        if self.pipelined:
            self.collector.close()
        else:
            self.envs.close()
