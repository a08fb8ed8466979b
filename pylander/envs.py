"""Environment construction: id normalisation, validation, vector envs and reward thresholds."""

from __future__ import annotations

import gymnasium as gym

from pylander.split_env import SplitVectorEnv, resolve_vector_mode

# Renamed ids: the notebook used LunarLander-v2, which gymnasium 1.x no longer registers.
ALIASES = {"LunarLander-v2": "LunarLander-v3"}


def resolve_env_id(env_id: str, *, announce: bool = True) -> str:
    """Map old names to current ones and check that gymnasium knows the id."""
    if env_id in ALIASES:
        new = ALIASES[env_id]
        if announce:
            print(f"pylander: {env_id} is not in gymnasium 1.x; using {new} (same task).")
        env_id = new
    if env_id not in gym.registry:
        close = [k for k in gym.registry if k.split("-")[0].lower() == env_id.split("-")[0].lower()]
        hint = f" Did you mean {', '.join(sorted(close))}?" if close else ""
        raise ValueError(f"unknown environment {env_id!r}.{hint}")
    return env_id


def check_spaces(env: gym.Env | gym.vector.VectorEnv, env_id: str) -> tuple[int, int]:
    """Return (observation size, number of actions); reject what a categorical policy can't do."""
    single = getattr(env, "single_action_space", env.action_space)
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    if not isinstance(single, gym.spaces.Discrete):
        raise ValueError(
            f"{env_id} has a {type(single).__name__} action space; pylander trains categorical "
            "policies and needs a Discrete one"
        )
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{env_id} needs a flat Box observation space, got {obs_space}")
    return int(obs_space.shape[0]), int(single.n)


def reward_threshold(env_id: str) -> float | None:
    """The return at which gymnasium considers the task solved (LunarLander: 200)."""
    return gym.spec(env_id).reward_threshold


def make_vector_env(env_id: str, num_envs: int, mode: str = "sync") -> gym.vector.VectorEnv:
    """A vector env in gymnasium's default NEXT_STEP autoreset mode (see rollout.py).

    ``async`` steps the envs in worker processes (worth it with 2+ spare cores); the workers run
    only gymnasium code, so the default fork start method is safe. ``split`` steps half of them
    in one worker process, overlapped with the other half here (:mod:`pylander.split_env`);
    ``auto`` is ``split`` where this process has a second core, else ``sync``.
    """
    fns = [lambda: gym.make(env_id) for _ in range(num_envs)]
    mode = resolve_vector_mode(mode, num_envs)
    if mode == "async":
        return gym.vector.AsyncVectorEnv(fns)
    if mode == "split":
        return SplitVectorEnv(fns)
    return gym.vector.SyncVectorEnv(fns)
