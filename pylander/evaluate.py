"""Evaluation of a policy on fresh episodes, and the ``python -m pylander.evaluate`` CLI.

Each of ``n`` envs plays a fixed number of episodes chosen before any is played (env i plays
episodes i, i+n, ...), so short episodes are not over-represented as they would be by taking the
first ``episodes`` to finish.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from pylander import ops
from pylander.checkpoint import CheckpointError, load_checkpoint
from pylander.envs import check_spaces, make_vector_env, resolve_env_id

LogitsFn = Callable[[Tensor], Tensor]
CPU = torch.device("cpu")
EVAL_SEED_OFFSET = 1_000_003
"""Evaluation seeds are ``seed + EVAL_SEED_OFFSET``, so they never repeat training's."""


@torch.no_grad()
def evaluate(logits_fn: LogitsFn, env_id: str, episodes: int, seed: int, *,
             stochastic: bool = False, num_envs: int = 16,
             device: torch.device = CPU) -> np.ndarray:
    """Play ``episodes`` episodes; greedy (argmax) actions unless ``stochastic``. Returns returns."""
    num_envs = max(1, min(num_envs, episodes))
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    envs = make_vector_env(env_id, num_envs)
    generator = torch.Generator(device=device).manual_seed(seed + EVAL_SEED_OFFSET)
    returns: list[float] = []
    try:
        obs, _ = envs.reset(seed=seed + EVAL_SEED_OFFSET)
        running = np.zeros(num_envs)
        after_done = np.zeros(num_envs, dtype=bool)
        while (quota > 0).any():
            logits = logits_fn(torch.as_tensor(obs, dtype=torch.float32, device=device))
            actions = ops.sample_categorical(logits, generator)[0] if stochastic else logits.argmax(-1)
            obs, reward, terminated, truncated, _ = envs.step(actions.cpu().numpy())
            running += np.where(after_done, 0.0, reward)  # autoreset steps carry no reward
            done = (terminated | truncated) & ~after_done
            for i in np.flatnonzero(done):
                if quota[i] > 0:
                    returns.append(float(running[i]))
                    quota[i] -= 1
                running[i] = 0.0
            after_done = terminated | truncated
    finally:
        envs.close()
    return np.asarray(returns)


def policy_from_checkpoint(payload: dict) -> tuple[torch.nn.Module, str]:
    """Rebuild the trained policy of a checkpoint; returns (policy, env id), where
    ``policy(obs)`` gives the action logits."""
    from pylander.algorithms import get_algorithm

    arch = payload["architecture"]
    try:
        algorithm = get_algorithm(arch["algo"])
    except ValueError as exc:
        raise CheckpointError(f"the checkpoint's {exc}") from None
    try:
        policy = algorithm.policy_from_state(arch, payload["algorithm"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"the checkpoint's policy does not fit its own architecture "
                              f"{arch}: {type(exc).__name__}: {reason}") from None
    policy.eval()
    return policy, payload["env_id"]


def check_fits_env(architecture: dict, env_id: str) -> None:
    """Raise CheckpointError unless the policy's input and output sizes are the env's."""
    env = gym.make(env_id)
    try:
        obs_size, num_actions = check_spaces(env, env_id)
    finally:
        env.close()
    if (architecture.get("obs_size"), architecture.get("num_actions")) != (obs_size, num_actions):
        raise CheckpointError(
            f"the checkpoint's policy takes {architecture.get('obs_size')} observations and "
            f"{architecture.get('num_actions')} actions, but {env_id} has {obs_size} and "
            f"{num_actions}")


def record_video(logits_fn: LogitsFn, env_id: str, path: Path, seed: int) -> float:
    """Record one greedy episode to ``path`` (.gif, or .mp4 with imageio-ffmpeg); returns its return."""
    import imageio.v2 as imageio

    if path.suffix.lower() not in {".gif", ".mp4"}:
        raise ValueError(f"--video must end in .gif or .mp4, got {path}")
    env = gym.make(env_id, render_mode="rgb_array")
    frames, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET)
        while True:
            frames.append(env.render())
            with torch.no_grad():
                action = int(logits_fn(torch.as_tensor(obs, dtype=torch.float32)[None]).argmax())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if terminated or truncated:
                frames.append(env.render())
                break
    finally:
        env.close()
    fps = env.metadata.get("render_fps", 50)
    try:
        if path.suffix.lower() == ".gif":
            imageio.mimsave(path, frames[::2], duration=2000 / fps, loop=0)
        else:
            imageio.mimsave(path, frames, fps=fps)
    except (ImportError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot write {path}: {exc} (for .mp4: pip install imageio-ffmpeg)") from None
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pylander.evaluate",
                                     description="Evaluate a pylander checkpoint.")
    parser.add_argument("checkpoint", type=Path, help="checkpoint.pt or best.pt of a run")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of argmax")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--video", type=Path, help="also record one greedy episode (.gif or .mp4)")
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    try:
        payload = load_checkpoint(args.checkpoint)
        logits_fn, env_id = policy_from_checkpoint(payload)
        env_id = resolve_env_id(env_id, announce=False)
        check_fits_env(payload["architecture"], env_id)
        returns = evaluate(logits_fn, env_id, args.episodes, args.seed, stochastic=args.stochastic)
        video_return = record_video(logits_fn, env_id, args.video, args.seed) if args.video else None
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {"env": env_id, "episodes": int(returns.size), "greedy": not args.stochastic,
              "mean": float(returns.mean()), "std": float(returns.std()),
              "min": float(returns.min()), "max": float(returns.max())}
    if args.video:
        result["video"], result["video_return"] = str(args.video), video_return
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{env_id}: {result['episodes']} episodes ({'greedy' if result['greedy'] else 'stochastic'}) "
              f"return {result['mean']:.1f} +- {result['std']:.1f} [min {result['min']:.1f}, "
              f"max {result['max']:.1f}]" + (f"; video: {args.video}" if args.video else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
