"""Environment construction: id normalisation, validation, vector envs and reward thresholds.

Every env pylander plays is made by :func:`make_env`, from an env id and the run's
``env_kwargs``. An id may name the module that registers it, gymnasium's ``module:EnvId`` form
(``my_package.envs:Maze-v0``): the module is imported first, so a custom env needs no code
change here, and the id saved with a run (config.toml, checkpoints) rebuilds it anywhere that
module can be imported.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from pylander.split_env import SplitVectorEnv, resolve_vector_mode

# Renamed ids: the notebook used LunarLander-v2, which gymnasium 1.x no longer registers.
ALIASES = {"LunarLander-v2": "LunarLander-v3"}


def env_name(env_id: str) -> str:
    """The registered name in ``env_id``, without a ``module:`` prefix."""
    return env_id.rpartition(":")[2]


def resolve_env_id(env_id: str, *, announce: bool = True) -> str:
    """Map old names to current ones, import a ``module:`` prefix's module, and check that
    gymnasium knows the id; ValueError says what is wrong."""
    if env_id in ALIASES:
        new = ALIASES[env_id]
        if announce:
            print(f"pylander: {env_id} is not in gymnasium 1.x; using {new} (same task).")
        env_id = new
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or whatever the module raised while importing
            raise ValueError(
                f"cannot import module {module!r} of env {env_id!r}: {type(exc).__name__}: {exc}"
            ) from None
    if name not in gym.registry:
        close = [k for k in gym.registry if k.split("-")[0].lower() == name.split("-")[0].lower()]
        hint = f" Did you mean {', '.join(sorted(close))}?" if close else ""
        where = f" (module {module} registers no such env)" if module else ""
        raise ValueError(f"unknown environment {name!r}{where}.{hint}")
    return env_id


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, **options: Any) -> gym.Env:
    """One env: ``gym.make(env_id, **env_kwargs, **options)`` (options such as
    ``render_mode``); ``env_id`` may be ``module:EnvId``."""
    return gym.make(env_id, **(env_kwargs or {}), **options)


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
    return gym.spec(env_name(resolve_env_id(env_id, announce=False))).reward_threshold


def make_vector_env(
    env_id: str,
    num_envs: int,
    mode: str = "sync",
    env_kwargs: dict[str, Any] | None = None,
    backend: str = "gymnasium",
) -> gym.vector.VectorEnv:
    """``num_envs`` of :func:`make_env` as a vector env in gymnasium's default NEXT_STEP
    autoreset mode (see rollout.py): ``sync`` steps them in this process
    (:class:`~pylander.vector_env.SerialVectorEnv`, gymnasium's ``SyncVectorEnv`` with less
    overhead).

    ``async`` steps the envs in worker processes (worth it with 2+ spare cores); the workers run
    only gymnasium code, so the default fork start method is safe. ``split`` steps half of them
    in one worker process, overlapped with the other half here (:mod:`pylander.split_env`);
    ``auto`` is ``split`` where this process has a second core, else ``sync``.
    ``backend="envpool"`` steps envpool's C++ envs in this process instead
    (``envpool_backend.py``; ``mode`` is unused).
    """
    if backend == "envpool":
        from pylander.envpool_backend import EnvpoolVectorEnv  # an optional dependency

        if env_kwargs:
            raise ValueError("--env-kwargs are for gymnasium's envs; envpool takes none here")
        return EnvpoolVectorEnv(env_id, num_envs)
    if backend != "gymnasium":
        raise ValueError(f"backend must be 'gymnasium' or 'envpool', got {backend!r}")
    fns = [lambda: make_env(env_id, env_kwargs) for _ in range(num_envs)]
    mode = resolve_vector_mode(mode, num_envs)
    if mode == "async":
        return gym.vector.AsyncVectorEnv(fns)
    if mode == "split":
        return SplitVectorEnv(fns)
    from pylander.vector_env import SerialVectorEnv  # which imports this module

    return SerialVectorEnv(fns)


def check_trainable(env_id: str, env_kwargs: dict | None = None) -> None:
    """Raise ValueError, naming the problem, unless pylander can train on ``env_id``: a known id
    whose env can be made (with ``env_kwargs``) and has a flat Box observation and Discrete
    action space."""
    env_id = resolve_env_id(env_id, announce=False)
    try:
        env = make_env(env_id, env_kwargs)
    except Exception as exc:  # missing extras (DependencyNotInstalled), bad kwargs, ...
        kwargs = f" with --env-kwargs {env_kwargs}" if env_kwargs else ""
        raise ValueError(
            f"{env_id} cannot be created{kwargs}: {type(exc).__name__}: {exc}"
        ) from None
    try:
        check_spaces(env, env_id)
    finally:
        env.close()
