"""Evaluation of a policy on fresh episodes, and the ``python -m pylander.evaluate`` CLI.

Each of ``n`` envs plays a fixed number of episodes chosen before any is played (env i plays
episodes i, i+n, ...), so short episodes are not over-represented as they would be by taking the
first ``episodes`` to finish.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pylander import ops
from pylander.checkpoint import CheckpointError, load_checkpoint
from pylander.envs import check_spaces, make_env, resolve_env_id
from pylander.forked import map_forked
from pylander.policies import ActorCritic
from pylander.split_env import usable_cores

LogitsFn = Callable[[Tensor], Tensor]
CPU = torch.device("cpu")
EVAL_SEED_OFFSET = 1_000_003
"""Evaluation seeds are ``seed + EVAL_SEED_OFFSET``, so they never repeat training's."""


def evaluate(
    logits_fn: LogitsFn,
    env_id: str,
    episodes: int,
    seed: int,
    *,
    stochastic: bool = False,
    num_envs: int = 16,
    device: torch.device = CPU,
    env_kwargs: dict[str, Any] | None = None,
    processes: int | None = None,
) -> np.ndarray:
    """Play ``episodes`` episodes of ``env_id`` (made with ``env_kwargs``); greedy (argmax)
    actions unless ``stochastic``. Returns their returns.

    The episodes, and the order of the returns, are those of a ``num_envs`` gymnasium vector env
    reset with ``seed + EVAL_SEED_OFFSET`` and run until each env has played its share. But
    only envs with episodes left are stepped (in a vector env the others would go on playing
    episodes nobody counts, and one lander hovering to the time limit would keep all of them
    busy), and on the CPU the envs are split among ``processes`` forked processes (default: this
    process's share of the cores). The policy always sees a batch of all ``num_envs`` rows, as
    in the vector env, so each row's logits, and the greedy returns, are the same bits however
    many envs are left and however they are split. Stochastic actions come from one generator
    per env, so they too are independent of the split (earlier versions drew every env's action
    from one generator, so their stochastic returns differ from these).
    """
    num_envs = max(1, min(num_envs, episodes))
    quota = np.full(num_envs, episodes // num_envs)
    quota[: episodes % num_envs] += 1
    if processes is None:
        processes = usable_cores()
    if device.type != "cpu":  # a forked child cannot use the parent's CUDA context
        processes = 1
    shares = np.array_split(np.arange(num_envs), max(1, min(processes, num_envs)))

    def play_share(envs: np.ndarray) -> list[tuple[int, int, float]]:
        return _play(logits_fn, env_id, quota, envs, seed, stochastic, device, env_kwargs)

    ended = [episode for share in map_forked(play_share, shares) for episode in share]
    return np.asarray([episode_return for _, _, episode_return in sorted(ended)])


@torch.no_grad()
def _play(
    logits_fn: LogitsFn,
    env_id: str,
    quota: np.ndarray,
    share: np.ndarray,
    seed: int,
    stochastic: bool,
    device: torch.device,
    env_kwargs: dict[str, Any] | None,
) -> list[tuple[int, int, float]]:
    """Env ``i`` of ``share`` plays ``quota[i]`` episodes: ``(the vector env's step at which each
    ends, env, return)``. Sorted, these are the vector env's order of completion; its autoreset
    costs a step, so a reset advances an env's clock too. ``obs`` holds a row for every env of
    the vector env (those of other shares stay zero) and goes to the policy whole."""
    envs = {int(i): make_env(env_id, env_kwargs) for i in share}
    seeds = {i: seed + EVAL_SEED_OFFSET + i for i in envs}
    generators = {i: torch.Generator(device=device).manual_seed(s) for i, s in seeds.items()}
    left = {i: int(quota[i]) for i in envs if quota[i] > 0}
    ended: list[tuple[int, int, float]] = []
    try:
        obs = np.zeros((len(quota), *envs[int(share[0])].observation_space.shape), np.float32)
        for i, env in envs.items():
            obs[i] = env.reset(seed=seeds[i])[0]
        running = dict.fromkeys(envs, 0.0)
        clock = dict.fromkeys(envs, 0)
        # An ActorCritic plays its greedy actions through one native call a step (its CPU
        # kernel's logits round differently from the module's, by ~1e-7 in float32), not the
        # dozen op and module calls of logits_fn, which took longer than the env steps.
        greedy = (
            logits_fn.greedy() if isinstance(logits_fn, ActorCritic) and not stochastic else None
        )
        while left:
            batch = torch.as_tensor(obs, device=device)
            playing = list(left)
            if greedy is not None:
                every = greedy(batch).tolist()
                actions = [every[i] for i in playing]
            elif stochastic:
                logits = logits_fn(batch)
                chosen = [
                    ops.sample_categorical(logits[i : i + 1], generators[i])[0] for i in playing
                ]
                actions = torch.cat(chosen).tolist()
            else:
                actions = logits_fn(batch)[playing].argmax(-1).tolist()
            for i, action in zip(playing, actions):
                obs[i], reward, terminated, truncated, _ = envs[i].step(action)
                running[i] += float(reward)
                clock[i] += 1
                if terminated or truncated:
                    ended.append((clock[i], i, running[i]))
                    running[i] = 0.0
                    left[i] -= 1
                    if left[i]:
                        obs[i] = envs[i].reset()[0]
                        clock[i] += 1
                    else:
                        del left[i]
    finally:
        for env in envs.values():
            env.close()
    return ended


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
        raise CheckpointError(
            f"the checkpoint's policy does not fit its own architecture "
            f"{arch}: {type(exc).__name__}: {reason}"
        ) from None
    policy.eval()
    return policy, payload["env_id"]


def check_fits_env(
    architecture: dict, env_id: str, env_kwargs: dict[str, Any] | None = None
) -> None:
    """Raise CheckpointError unless the policy's input and output sizes are the env's."""
    env = make_env(env_id, env_kwargs)
    try:
        obs_size, num_actions = check_spaces(env, env_id)
    finally:
        env.close()
    if (architecture.get("obs_size"), architecture.get("num_actions")) != (obs_size, num_actions):
        raise CheckpointError(
            f"the checkpoint's policy takes {architecture.get('obs_size')} observations and "
            f"{architecture.get('num_actions')} actions, but {env_id} has {obs_size} and "
            f"{num_actions}"
        )


def check_video_path(path: Path) -> None:
    """Raise ValueError unless a video can be written to ``path``: a .gif or .mp4 (which needs
    imageio-ffmpeg) in a writable folder. Cheap, so it is checked before anything is played."""
    suffix = path.suffix.lower()
    if suffix not in {".gif", ".mp4"}:
        raise ValueError(f"--video must end in .gif or .mp4, got {path}")
    if suffix == ".mp4" and importlib.util.find_spec("imageio_ffmpeg") is None:
        raise ValueError(
            f"--video {path}: writing .mp4 needs imageio-ffmpeg (pip install "
            "imageio-ffmpeg); .gif needs nothing more"
        )
    if path.is_dir():
        raise ValueError(f"--video {path} is a directory; give a file name ending in {suffix}")
    folder = path.parent
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"--video {path}: the folder {folder} {problem}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ValueError(
            f"--video {path}: cannot write to {folder}: {exc.strerror or exc}"
        ) from None


def record_video(
    logits_fn: LogitsFn,
    env_id: str,
    path: Path,
    seed: int,
    *,
    stochastic: bool = False,
    env_kwargs: dict[str, Any] | None = None,
) -> float:
    """Record one episode to ``path`` (.gif, or .mp4 with imageio-ffmpeg); returns its return.

    Actions are greedy, or sampled with ``stochastic`` (from a generator seeded by ``seed``, so
    the same seed records the same episode).
    """
    import imageio.v2 as imageio

    check_video_path(path)
    env = make_env(env_id, env_kwargs, render_mode="rgb_array")
    generator = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    frames, total = [], 0.0
    try:
        obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET)
        while True:
            frames.append(env.render())
            with torch.no_grad():
                logits = logits_fn(torch.as_tensor(obs, dtype=torch.float32)[None])
                chosen = (
                    ops.sample_categorical(logits, generator)[0]
                    if stochastic
                    else logits.argmax(-1)
                )
            obs, reward, terminated, truncated, _ = env.step(int(chosen[0]))
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
    except (ImportError, ValueError, RuntimeError, OSError) as exc:
        raise ValueError(f"cannot write {path}: {exc}") from None
    return total


def checkpoint_file(path: Path) -> Path:
    """``path``, or for a run directory its ``best.pt`` (else its ``checkpoint.pt``)."""
    if not path.is_dir():
        return path
    for name in ("best.pt", "checkpoint.pt"):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} is a directory with no best.pt or checkpoint.pt in it")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pylander.evaluate", description="Evaluate a pylander checkpoint."
    )
    parser.add_argument(
        "checkpoint",
        type=Path,
        help="a run directory (its best.pt, else its checkpoint.pt) or a .pt file",
    )
    parser.add_argument(
        "--episodes", type=int, default=100, help="evaluation episodes to play (default: 100)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the episodes (and of sampled actions); the same seed plays "
        "the same episodes (default: 0)",
    )
    parser.add_argument(
        "--stochastic", action="store_true", help="sample actions instead of argmax (the video too)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--video",
        type=Path,
        help="also record one episode to this .gif (or .mp4, with imageio-ffmpeg)",
    )
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    if args.video is not None:
        try:
            check_video_path(args.video)
        except ValueError as exc:
            parser.error(str(exc))
    try:
        path = checkpoint_file(args.checkpoint)
        payload = load_checkpoint(path)
        logits_fn, env_id = policy_from_checkpoint(payload)
        env_id = resolve_env_id(env_id, announce=False)
        env_kwargs = payload["config"].get("env_kwargs") or {}
        check_fits_env(payload["architecture"], env_id, env_kwargs)
        returns = evaluate(
            logits_fn,
            env_id,
            args.episodes,
            args.seed,
            stochastic=args.stochastic,
            env_kwargs=env_kwargs,
        )
        video_return = (
            record_video(
                logits_fn,
                env_id,
                args.video,
                args.seed,
                stochastic=args.stochastic,
                env_kwargs=env_kwargs,
            )
            if args.video
            else None
        )
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = {
        "env": env_id,
        "episodes": int(returns.size),
        "greedy": not args.stochastic,
        "mean": float(returns.mean()),
        "std": float(returns.std()),
        "min": float(returns.min()),
        "max": float(returns.max()),
    }
    if args.video:
        result["video"], result["video_return"] = str(args.video), video_return
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{env_id}: {result['episodes']} episodes ({'greedy' if result['greedy'] else 'stochastic'}) "
            f"return {result['mean']:.1f} +- {result['std']:.1f} [min {result['min']:.1f}, "
            f"max {result['max']:.1f}]" + (f"; video: {args.video}" if args.video else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
