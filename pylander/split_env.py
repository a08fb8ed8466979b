"""``--vector split``: half the envs step in one worker process while the other half step here.

The policy still acts on all ``N`` observations at once, exactly as with ``--vector sync``; only
the env stepping is split, so a run is the same run as ``sync`` (same seeds, same metrics) and
stays on-policy. On 2 cores that overlaps the two halves' physics, about half of a rollout's
time; the update still runs alone.

The worker holds a gymnasium ``SyncVectorEnv`` of envs ``k .. N-1`` (``k = N // 2``) and talks
to the parent through one pipe: the parent sends the actions, the worker steps and writes
observations, rewards and flags into shared memory, then answers with one byte. It dies with the
parent: it exits on the pipe's end-of-file, and on Linux the kernel also kills it
(``PR_SET_PDEATHSIG``) if the parent is killed outright.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import sys
import weakref

import gymnasium as gym
import numpy as np

from pylander.threads import available_cores

_STEP, _RESET, _CLOSE = b"s", b"r", b"c"
# Forked, so the worker inherits the shared buffers and their views; it runs only gymnasium code,
# as AsyncVectorEnv's workers do.
_CONTEXT = mp.get_context("fork")


def usable_cores() -> int:
    """CPUs this process may run on, shared among the local ranks (``--procs`` / torchrun)."""
    return max(available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)


def resolve_vector_mode(mode: str, num_envs: int) -> str:
    """``auto``: ``split`` when this process has a second core and there are 2+ envs, else
    ``sync``. Other modes pass unchanged."""
    if mode != "auto":
        return mode
    return "split" if num_envs >= 2 and usable_cores() >= 2 else "sync"


class _Shared:
    """One half's step results in shared memory, with NumPy views."""

    def __init__(self, num_envs: int, obs_space: gym.spaces.Box):
        def array(shape: tuple[int, ...], dtype) -> np.ndarray:
            dtype = np.dtype(dtype)
            raw = _CONTEXT.RawArray(ctypes.c_char, int(np.prod(shape)) * dtype.itemsize)
            return np.frombuffer(raw, dtype=dtype).reshape(shape)

        self.obs = array((num_envs, *obs_space.shape), obs_space.dtype)
        self.reward = array((num_envs,), np.float64)
        self.terminated = array((num_envs,), np.bool_)
        self.truncated = array((num_envs,), np.bool_)


def _die_with_parent(parent_pid: int) -> None:
    """Make the kernel kill this (forked worker) process when its parent dies (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def become_worker(parent_pid: int, parent_end) -> None:
    """What every forked worker process does first: die with its parent, close its copy of the
    parent's end of the pipe (else it holds the pipe open and never sees the parent go), and
    ignore SIGINT/SIGTERM. Ctrl-C or a SIGTERM sent to the whole process group is the parent's
    to handle (it saves a checkpoint, then closes its workers); a worker ends with the parent."""
    _die_with_parent(parent_pid)
    parent_end.close()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _worker(env_fns: list, shared: _Shared, conn, parent_conn, parent_pid: int) -> None:
    become_worker(parent_pid, parent_conn)
    envs = None
    try:
        envs = gym.vector.SyncVectorEnv(env_fns)
        while True:
            message = conn.recv_bytes()
            command, payload = message[:1], message[1:]
            if command == _STEP:
                actions = np.frombuffer(payload, dtype=np.int64)
                obs, shared.reward[:], shared.terminated[:], shared.truncated[:], _ = envs.step(
                    actions
                )
            elif command == _RESET:
                seed, options = pickle.loads(payload)
                obs, _ = envs.reset(seed=seed, options=options)
            else:
                break
            shared.obs[:] = obs
            conn.send_bytes(b"ok")
    except EOFError:  # the parent is gone
        pass
    except BaseException as exc:  # reported to the parent, which raises it
        conn.send_bytes(b"!" + f"{type(exc).__name__}: {exc}".encode())
    finally:
        if envs is not None:
            envs.close()


class SplitVectorEnv(gym.vector.VectorEnv):
    """A vector env of ``len(env_fns)`` envs, the second half stepped in a worker process.

    Behaves as ``gym.vector.SyncVectorEnv(env_fns)`` (same seeding, NEXT_STEP autoreset), but
    returns empty ``info`` dicts.
    """

    def __init__(self, env_fns: list):
        if len(env_fns) < 2:
            raise ValueError(f"--vector split needs 2 or more envs, got num_envs={len(env_fns)}")
        self.split = len(env_fns) // 2
        self.local = gym.vector.SyncVectorEnv(env_fns[: self.split])
        self.num_envs = len(env_fns)
        self.single_observation_space = self.local.single_observation_space
        self.single_action_space = self.local.single_action_space
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, self.num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = self.local.metadata
        self._shared = _Shared(self.num_envs - self.split, self.single_observation_space)
        self._conn, child_conn = _CONTEXT.Pipe()
        self._process = _CONTEXT.Process(
            target=_worker,
            daemon=True,
            name="pylander-split-env",
            args=(env_fns[self.split :], self._shared, child_conn, self._conn, os.getpid()),
        )
        self._process.start()
        child_conn.close()
        # Also at interpreter exit if close() was never called: the worker ignores SIGTERM, so
        # multiprocessing's own exit handler could not end it.
        self._finalizer = weakref.finalize(self, _stop_worker, self._conn, self._process)

    def _wait(self) -> None:
        try:
            answer = self._conn.recv_bytes()
        except EOFError:
            raise RuntimeError(
                f"the split env's worker process died (exit code {self._process.exitcode})"
            ) from None
        if answer[:1] == b"!":
            raise RuntimeError(f"the split env's worker failed: {answer[1:].decode()}")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # SyncVectorEnv seeds env i with seed + i: the worker's first env is env `split`.
        self._conn.send_bytes(
            _RESET + pickle.dumps((None if seed is None else seed + self.split, options))
        )
        obs, _ = self.local.reset(seed=seed, options=options)
        self._wait()
        return np.concatenate([obs, self._shared.obs]), {}

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.int64)
        self._conn.send_bytes(_STEP + actions[self.split :].tobytes())
        obs, reward, terminated, truncated, _ = self.local.step(actions[: self.split])
        self._wait()  # the worker stepped its half meanwhile
        shared = self._shared
        return (
            np.concatenate([obs, shared.obs]),
            np.concatenate([reward, shared.reward]),
            np.concatenate([terminated, shared.terminated]),
            np.concatenate([truncated, shared.truncated]),
            {},
        )

    def close_extras(self, **kwargs) -> None:
        self._finalizer()
        self.local.close()


def _stop_worker(conn, process) -> None:
    stop_worker(process, conn, lambda: conn.send_bytes(_CLOSE))


def stop_worker(process, conn, goodbye) -> None:
    """Ask a worker process to exit (``goodbye()`` sends it the message), give it 5 s, then kill
    it; close the parent's end of its pipe."""
    with contextlib.suppress(OSError):  # the worker has gone already
        goodbye()
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()
