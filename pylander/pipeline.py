"""``--rollout-workers W``: worker processes step the envs, a rollout at a time, on other cores.

The ``N`` envs are split among the ``W`` workers (envs ``offset .. offset + count`` each, seeded
as one ``SyncVectorEnv`` of ``N`` would seed them, each worker's sampling generator seeded with
the same seed plus its offset). The workers act with a snapshot of the policy (the actor and the
observation statistics) kept in shared memory: :meth:`PipelinedCollector.start` copies the
current policy into it and sends the workers off, :meth:`~PipelinedCollector.collect` waits for
their rollout. Called back to back, that is on-policy collection on several cores.

With ``--collect-ahead`` the learner calls ``start`` before its update and ``collect`` after it,
so the workers collect the next rollout during the update: every rollout after the first of a
segment then comes from the policy of one update earlier. The update corrects for that with the
acting policy's log-probabilities, which :meth:`~PipelinedCollector.behaviour_log_probs` computes
from the snapshot before the next ``start`` replaces it.

Resuming stays exact: the trainer restarts every env's episodes at each checkpoint, and each
worker's sampling generator is reseeded there too; a rollout still in flight at a restart is
discarded, and the first rollout after it is collected without lag, by the resumed run as by
the run that went on.

A worker is forked (Linux, macOS), holds only CPU tensors, and dies with its parent: it exits on
the pipe's end-of-file, and on Linux the kernel kills it if the parent is killed outright (as
:mod:`pylander.split_env`'s worker does).
"""

from __future__ import annotations

import contextlib
import copy
import multiprocessing as mp
import os
import weakref
from collections.abc import Callable

import gymnasium as gym
import torch
from torch import Tensor

from pylander import ops
from pylander.policies import ActorCritic
from pylander.rollout import Rollout, RolloutCollector
from pylander.split_env import become_worker, stop_worker

_CONTEXT = mp.get_context("fork")


_FIELDS = ["obs", "actions", "rewards", "terminated", "truncated", "valid"]


def _tensors(rollout: Rollout) -> list[Tensor]:
    return [getattr(rollout, name) for name in _FIELDS]


def _worker(conn, parent_conn, make_envs, behaviour, shared, offset, parent_pid) -> None:
    become_worker(parent_pid, parent_conn)
    torch.set_num_threads(1)
    envs = None
    try:
        envs = make_envs(shared.actions.shape[1])
        generator = torch.Generator()
        num_steps = shared.actions.shape[0]
        collector = RolloutCollector(envs, behaviour, num_steps, generator, torch.device("cpu"))
        while True:
            command, seed = conn.recv()
            if command == "collect":
                for target, source in zip(_tensors(shared), _tensors(collector.collect())):
                    target.copy_(source)
                conn.send(("done", collector.pop_finished()))
            elif command == "reset":
                collector.reset(seed + offset)  # env offset + i gets seed + offset + i
                generator.manual_seed(seed + offset)
                conn.send(("done", []))
            else:
                break
    except EOFError:  # the parent is gone
        pass
    except BaseException as exc:  # raised again in the parent
        with contextlib.suppress(Exception):
            conn.send(("error", exc))
    finally:
        if envs is not None:
            envs.close()


class _Worker:
    """One worker process and the shared buffers of its envs' part of a rollout."""

    def __init__(self, make_envs, behaviour, num_envs: int, num_steps: int, offset: int):
        obs_size = behaviour.obs_size
        self.shared = Rollout(
            torch.zeros(num_steps + 1, num_envs, obs_size).share_memory_(),
            torch.zeros(num_steps, num_envs, dtype=torch.long).share_memory_(),
            torch.zeros(num_steps, num_envs).share_memory_(),
            *(torch.zeros(num_steps, num_envs, dtype=torch.bool).share_memory_() for _ in "ttv"),
        )
        self.conn, child_conn = _CONTEXT.Pipe()
        self.process = _CONTEXT.Process(
            target=_worker,
            daemon=True,
            name="pylander-rollout",
            args=(child_conn, self.conn, make_envs, behaviour, self.shared, offset, os.getpid()),
        )
        self.process.start()
        child_conn.close()

    def send(self, command: str, seed: int | None = None) -> None:
        try:
            self.conn.send((command, seed))
        except OSError:
            raise self._died() from None

    def wait(self) -> list[tuple[float, int]]:
        try:
            status, payload = self.conn.recv()
        except EOFError:
            raise self._died() from None
        if status == "error":
            raise payload
        return payload

    def close(self) -> None:
        stop_worker(self.process, self.conn, lambda: self.conn.send(("close", None)))

    def _died(self) -> BaseException:
        """The error the worker reported before it ended, else one saying that it died."""
        with contextlib.suppress(EOFError, OSError):
            if self.conn.poll():
                status, payload = self.conn.recv()
                if status == "error":
                    return payload
        self.process.join(timeout=1)
        return RuntimeError(f"a rollout worker process died (exit code {self.process.exitcode})")


def _close_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()


class PipelinedCollector:
    """Collects rollouts of ``num_envs`` envs, ``make_envs(count)`` of them in each of
    ``workers`` worker processes (see the module docstring). Returns rollouts on ``device``."""

    def __init__(
        self,
        make_envs: Callable[[int], gym.vector.VectorEnv],
        policy: ActorCritic,
        num_envs: int,
        num_steps: int,
        device: torch.device,
        workers: int = 1,
    ):
        if not 1 <= workers <= num_envs:
            raise ValueError(f"rollout workers must be in [1, num_envs={num_envs}], got {workers}")
        if mp.current_process().daemon:
            raise ValueError(
                "rollout workers cannot be started from a daemonic process (multiprocessing "
                "forbids it, as in a multiprocessing.Pool); use --rollout-workers 0 there"
            )
        self.device = device
        # The acting policy: the actor and the observation statistics, without the critic.
        self.behaviour = copy.deepcopy(policy).cpu()
        self.behaviour.critic = None
        self.behaviour.share_memory()
        self._in_flight = False
        self._finished: list[tuple[float, int]] = []
        counts = [len(part) for part in torch.arange(num_envs).tensor_split(workers)]
        offsets = [sum(counts[:w]) for w in range(workers)]
        self._workers: list[_Worker] = []
        # Also at interpreter exit if close() was never called: the workers ignore SIGTERM
        # (their parent's to handle), so multiprocessing's own exit handler could not end them.
        self._finalizer = weakref.finalize(self, _close_all, self._workers)
        try:
            for count, offset in zip(counts, offsets):
                self._workers.append(_Worker(make_envs, self.behaviour, count, num_steps, offset))
        except BaseException:
            self.close()
            raise

    def start(self, policy: ActorCritic) -> None:
        """Copy ``policy`` into the snapshot and start collecting the next rollout with it."""
        if self._in_flight:
            raise RuntimeError("a rollout is already being collected")
        source = policy.state_dict()
        with torch.no_grad():
            for name, value in self.behaviour.state_dict().items():
                value.copy_(source[name])
        for worker in self._workers:
            worker.send("collect")
        self._in_flight = True

    def collect(self, policy: ActorCritic) -> Rollout:
        """The rollout in flight, or, if there is none, one collected now with ``policy``."""
        if not self._in_flight:
            self.start(policy)
        self._finished = self._wait_all()
        self._in_flight = False
        return Rollout(
            *(
                torch.cat([getattr(w.shared, name) for w in self._workers], 1).to(self.device)
                for name in _FIELDS
            )
        )

    def behaviour_log_probs(self, rollout: Rollout) -> Tensor:
        """The log-probabilities of every action, ``[T * N, A]``, under the policy that collected
        ``rollout`` (the last collected): call it before the next :meth:`start`."""
        T, N = rollout.actions.shape
        with torch.no_grad():  # computed as the update computes the current policy's
            inputs = self.behaviour.normalize(rollout.obs[:T].reshape(T * N, -1).cpu())
        log_probs = ops.actor_critic_forward(inputs, self.behaviour.actor_parameters(), [])[0]
        return log_probs.to(self.device)

    def reset(self, seed: int) -> None:
        """Fresh episodes from ``seed``, and the sampling generators reseeded from it; a rollout
        in flight is discarded."""
        if self._in_flight:
            self._wait_all()
            self._in_flight = False
        for worker in self._workers:
            worker.send("reset", seed)
        self._wait_all()
        self._finished = []

    def pop_finished(self) -> list[tuple[float, int]]:
        """(return, length) of the episodes that ended in the last collected rollout."""
        finished, self._finished = self._finished, []
        return finished

    def close(self) -> None:
        self._finalizer()

    def _wait_all(self) -> list[tuple[float, int]]:
        """Every worker's answer (all of them, even after one fails), their episodes joined."""
        answers, error = [], None
        for worker in self._workers:
            try:
                answers.extend(worker.wait())
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error
        return answers
