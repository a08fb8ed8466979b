"""The seed notebook's REINFORCE, exactly: ``--algo notebook`` (formerly ``--algo seed``).

One episode at a time with the notebook's ``PolicyNetwork`` (Linear + ReLU, log of softmax
+ 1e-9), then its per-step update: for each step t, one Adam step (lr 1e-3) on the gradient

    -alpha * gamma**t * G_t * grad log pi(a_t | s_t)

taken at the rollout-time parameters. The notebook computes each of those T gradients with its
own ``backward()``; here the returns come from the native scan and all T per-step gradients from
one batched native ``pg_loss`` call, chained by hand through the single Linear + ReLU layer.
The T Adam steps that follow, on those fixed gradients, are elementwise recurrences: one native
``adam_scan`` call does them, bitwise equal to torch's Adam loop. ``tests/test_seed_parity.py`` checks the
parameters against :mod:`pylander.reference` after several episodes.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pylander import ops, reference
from pylander.algorithms import Iteration, check_parameters
from pylander.algorithms.adam_scan import apply_adam_scan
from pylander.config import TrainConfig
from pylander.envs import check_spaces, make_env


class NotebookReinforce:
    name = "notebook"

    def __init__(
        self,
        config: TrainConfig,
        env: gym.Env,
        obs_size: int,
        num_actions: int,
        device: torch.device,
    ):
        if device.type != "cpu":
            raise ValueError("--algo notebook reproduces the notebook on the CPU only")
        self.config, self.env = config, env
        # Its forward pass gives log-probabilities, which serve as the logits.
        self.policy = reference.PolicyNetwork((obs_size, num_actions))
        self.updates = 0
        self._episode_returns: list[float] = []

    @classmethod
    def build(cls, config: TrainConfig, device: torch.device, comm) -> NotebookReinforce:
        if comm.world_size > 1:
            raise ValueError(
                "--algo notebook is the single-process notebook; run it without --procs/torchrun"
            )
        env = make_env(config.env_id, config.env_kwargs)
        try:
            return cls(config, env, *check_spaces(env, config.env_id), device)
        except BaseException:
            env.close()
            raise

    @staticmethod
    def policy_from_state(architecture: dict, state: dict) -> torch.nn.Module:
        policy = reference.PolicyNetwork((architecture["obs_size"], architecture["num_actions"]))
        policy.load_state_dict(state["policy"])
        return policy

    def run_episode(self) -> tuple[Tensor, Tensor, Tensor]:
        """Play one episode like the notebook's ``run_episode``; returns (obs, actions, rewards)."""
        observation, _ = self.env.reset()
        observations, actions, rewards = [], [], []
        # Detached, and the op called directly: without autograd's dispatch and the wrapper's
        # no_grad, the per-step call costs a third less (measured; it is most of a step's time).
        weight, bias = self.policy.w.weight.detach(), self.policy.w.bias.detach()
        while True:
            observations.append(observation)
            # The notebook's act() in one native call: the same draws from the global RNG.
            action = int(
                torch.ops.pylander.notebook_act(torch.from_numpy(observation), weight, bias)
            )
            observation, reward, terminated, truncated, _ = self.env.step(action)
            actions.append(action)
            rewards.append(reward)
            if terminated or truncated:
                self.env.reset()  # the notebook resets here too, which advances the env's RNG
                break
        # Rewards stay float64 as in the notebook (torch.tensor of the env's float64 rewards).
        return (
            torch.from_numpy(np.stack(observations)).float(),
            torch.tensor(actions),
            torch.tensor(rewards),
        )

    def per_step_gradients(
        self, obs: Tensor, actions: Tensor, rewards: Tensor
    ) -> tuple[Tensor, Tensor, float, float]:
        """The notebook's T scaled gradients for the weight ``[T, A, obs]`` and bias ``[T, A]``,
        with the summed weighted loss and the mean entropy, for the log."""
        cfg, layer = self.config, self.policy.w
        T = rewards.shape[0]
        returns = ops.discounted_returns(
            rewards[:, None], torch.zeros(T, 1, dtype=torch.bool), cfg.gamma
        )[:, 0]
        weights = cfg.alpha * cfg.gamma ** torch.arange(T, dtype=torch.float64) * returns
        with torch.no_grad():
            pre_activation = layer(obs)
            logits = pre_activation.relu()
            # The notebook differentiates log(softmax + 1e-9); that is log_softmax's gradient
            # scaled by p_a / (p_a + 1e-9), folded into the weights so the result is exact.
            p_chosen = torch.softmax(logits, -1).gather(1, actions[:, None]).squeeze(1)
            weights = (weights * p_chosen / (p_chosen + 1e-9)).to(logits.dtype)
            loss, entropy, _ = torch.ops.pylander.pg_loss(logits, actions, weights, "sum")
            # With reduction="sum" row t of d(loss)/d(logits) is step t's own gradient: the
            # backward kernel called as autograd would call it, without building the graph.
            one, zero = torch.ones((), dtype=logits.dtype), torch.zeros((), dtype=logits.dtype)
            grad_logits = torch.ops.pylander.pg_loss_backward(
                one, zero, logits, actions, weights, "sum"
            )
        delta = grad_logits * (pre_activation > 0)
        return delta[:, :, None] * obs[:, None, :], delta, loss.item(), entropy.item()

    def iterate(self, progress: float) -> Iteration:
        obs, actions, rewards = self.run_episode()
        grad_weight, grad_bias, loss, entropy = self.per_step_gradients(obs, actions, rewards)
        layer, optimizer = self.policy.w, self.policy.optimizer
        # The notebook's T Adam steps, one per step's gradient, in one native scan.
        apply_adam_scan(optimizer, [(layer.weight, grad_weight), (layer.bias, grad_bias)])
        self.updates += 1
        check_parameters(self.policy, self.updates)
        episode_return = float(rewards.double().sum())
        self._episode_returns.append(episode_return)
        if (self.updates - 1) % 100 == 0 and not self.config.quiet:
            # The notebook's own progress line: the mean over every episode so far.
            print(
                f"Episode {self.updates - 1} finished with average reward "
                f"{np.mean(self._episode_returns)}"
            )
        steps = int(rewards.shape[0])
        return Iteration(
            steps,
            [(episode_return, steps)],
            {
                "policy_loss": loss,
                "entropy": entropy,
                "learning_rate": optimizer.param_groups[0]["lr"],
            },
        )

    # --- trainer interface -----------------------------------------------------------------

    def reset_envs(self, seed: int) -> None:
        self.env.reset(seed=seed)

    def architecture(self) -> dict:
        return {
            "algo": self.name,
            "obs_size": self.policy.w.in_features,
            "num_actions": self.policy.w.out_features,
        }

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.policy.optimizer.state_dict(),
            "updates": self.updates,
            "episode_returns": list(self._episode_returns),
            "torch_rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.policy.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self._episode_returns = [float(r) for r in state["episode_returns"]]
        torch.set_rng_state(state["torch_rng"])

    def close(self) -> None:
        self.env.close()
