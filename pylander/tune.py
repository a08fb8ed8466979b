"""``python -m pylander.tune``: search hyperparameters with Optuna.

Each trial trains ``--seeds`` seeds (base seed, base seed + 1, ...: the same ones for every
trial, so trials differ by their settings, not their luck) for ``--trial-steps`` env steps.

Objective (maximised): the area under the evaluation curve, i.e. the mean of the values a run
recorded over its budget, averaged over the seeds. The curve is the periodic greedy evaluation
(``eval_mean_return`` in the update's metrics, every ``--eval-interval`` steps) when the trainer
has one, else the training ``mean_return`` (last 100 episodes) of every update. A setting that
gets good early therefore beats one that gets as good only at the end. ``--unsolved-penalty P``
subtracts P for each seed whose curve never reaches the env's reward threshold.

Sampler: TPE, seeded (``--sampler-seed``; with ``--jobs 1`` a search is reproducible). Pruner:
median pruning on the running objective, reported at 20 fixed points of each seed's budget (so
trials with different rollout sizes are compared at the same env step). The median pruner was
chosen over successive halving because a search here is tens of trials, not hundreds: it stops
only trials worse than the median of the finished ones at the same step, and needs no minimum
resource or reduction factor tuned; successive halving's rungs would prune on a handful of
noisy early points.

Storage: ``DIR/study.db`` (SQLite, study ``pylander-tune``). ``--trials N`` is the number of
finished (complete or pruned) trials the study should hold: rerunning the same command after a
kill continues the search (the trial that was running is marked failed, finished ones are kept);
a larger N searches further. Watch or inspect it with
``optuna-dashboard sqlite:///DIR/study.db``. Trials' runs are in ``DIR/trials/<n>/seed<s>``.
The best settings are written to ``DIR/best.toml``: ``python -m pylander.train --config
DIR/best.toml`` trains with them (the base config's budget and settings, the trial's on top).
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import math
import os
import sys
import threading
import time
from pathlib import Path

from pylander.config import TrainConfig
from pylander.search import STUDY_NAME, Search
from pylander.search_space import NUM_ENVS, NUM_STEPS, apply_params, default_space


def run_trials(search: Search, trials: int, worker: int = 0, processes: int = 1) -> None:
    """Run ``trials`` trials of the search in this process, one of ``processes`` running trials
    at once; a trial whose training fails (diverges, or its settings are invalid) is recorded as
    failed and the search goes on."""

    from pylander.algorithms import NonFiniteError
    from pylander.threads import training_threads, using_threads

    with using_threads(training_threads(search.base, processes)):
        study = search.open_study(worker)
        study.optimize(search.objective(), n_trials=trials, catch=(NonFiniteError, ValueError))


def _worker(search: Search, trials: int, worker: int, processes: int, parent: int) -> None:
    """A worker process: exits at once when the search process dies (a killed search must not
    leave trials running; the trial it held is marked failed when the search is rerun)."""

    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    from pylander.trainer import TrainingInterrupted

    threading.Thread(target=watch, daemon=True).start()
    try:
        run_trials(search, trials, worker, processes)
    except TrainingInterrupted:  # Ctrl-C reached the whole process group; the search reports it
        sys.exit(130)


# --- command line ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    space = "\n".join(f"  {name:<15} {p.describe}" for name, p in default_space().items())
    parser = argparse.ArgumentParser(
        prog="python -m pylander.tune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search hyperparameters with Optuna (TPE sampler, median pruner).",
        epilog=f"search space (--params restricts it):\n{space}\n\n" + __doc__.split("\n\n", 1)[1],
    )
    add = parser.add_argument
    add("--env", help="gymnasium env id (default: the base config's, LunarLander-v3)")
    add(
        "--config",
        type=Path,
        metavar="BASE.toml",
        help="fixed settings every trial starts from (a config.toml; default: the defaults)",
    )
    add("--trials", type=int, default=50, help="finished trials the study should hold")
    add("--jobs", type=int, default=1, help="trials run at once, each in its own process")
    add("--trial-steps", type=int, default=500_000, help="env steps per seed of a trial")
    add("--seeds", type=int, default=2, help="training seeds per trial (objective averaged)")
    add("--params", help="comma-separated names: search only these (default: all below)")
    add("--search-space", action="store_true", help="print the search space and exit")
    add(
        "--eval-interval",
        type=int,
        metavar="STEPS",
        help="steps between the trials' greedy evaluations (default: a tenth of --trial-steps; "
        "0: score the training mean instead)",
    )
    add(
        "--unsolved-penalty",
        type=float,
        default=0.0,
        help="subtracted from the objective for each seed never reaching the reward threshold",
    )
    add("--no-prune", action="store_true", help="run every trial to the end")
    add("--sampler-seed", type=int, default=0, help="seed of the TPE sampler")
    add("--out", type=Path, metavar="DIR", help="output folder (default runs/tune-<env>)")
    return parser


def search_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Search:
    """Validate everything before anything is written; errors are usage errors."""
    from pylander.envs import resolve_env_id
    from pylander.train import check_env

    for name in ("trials", "jobs", "trial_steps", "seeds"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (math.isfinite(args.unsolved_penalty) and args.unsolved_penalty >= 0):
        parser.error(f"--unsolved-penalty must be >= 0, got {args.unsolved_penalty}")
    space = default_space()
    params = list(space) if args.params is None else [p.strip() for p in args.params.split(",")]
    unknown = [p for p in params if p not in space]
    if unknown or not params or len(set(params)) != len(params):
        parser.error(
            f"--params: unknown or repeated names {unknown or params}; choose from "
            f"{', '.join(space)}"
        )
    try:
        base = TrainConfig.load(args.config) if args.config else TrainConfig()
        if args.env:
            base = dataclasses.replace(base, env_id=args.env)
        base.validate()
    except ValueError as exc:
        parser.error(f"--config: {exc}")
    check_env(base, parser)
    base.env_id = resolve_env_id(base.env_id, announce=False)
    envs = max(NUM_ENVS) if "num_envs" in params else base.num_envs
    steps = max(NUM_STEPS) if "num_steps" in params else base.num_steps
    if args.trial_steps < envs * steps:
        parser.error(
            f"--trial-steps {args.trial_steps} is smaller than one rollout ({envs} envs "
            f"x {steps} steps = {envs * steps}, the largest the search can choose)"
        )
    eval_interval = args.eval_interval
    eval_interval = max(args.trial_steps // 10, 1) if eval_interval is None else eval_interval
    if eval_interval < 0:
        parser.error(f"--eval-interval must be >= 0, got {eval_interval}")
    out = args.out or Path(f"runs/tune-{base.env_id}")
    return Search(
        base,
        params,
        args.trial_steps,
        args.seeds,
        out,
        eval_interval,
        args.unsolved_penalty,
        args.sampler_seed,
        not args.no_prune,
    )


def prepare_study(search: Search, parser: argparse.ArgumentParser):
    """Open (or create) the study; refuse one made with other settings; mark the trials a
    killed search left running as failed."""
    from optuna.trial import TrialState

    study = search.open_study()
    fingerprint, held = search.fingerprint(), study.user_attrs.get("search")
    if held is None:
        study.set_user_attr("search", fingerprint)
    elif held != fingerprint:
        differ = ", ".join(k for k in fingerprint if held.get(k) != fingerprint[k])
        parser.error(
            f"--out {search.out} holds a search with other settings ({differ}); use another --out"
        )
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        # Safe: this process holds the folder's lock, so no other search runs these trials.
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        print(
            f"trial {trial.number} was left running by a killed search: marked failed",
            file=sys.stderr,
        )
    return study


def write_best(study, search: Search) -> Path | None:
    """Print the best trial and write its settings as a config for pylander.train."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        print("no trial completed yet: nothing to write", file=sys.stderr)
        return None
    best = max(done, key=lambda t: t.value)
    config = dataclasses.replace(apply_params(search.base, best.params), out="")
    path = search.out / "best.toml"
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(
        f"# pylander.tune: best of {len(done)} complete trials in {search.out}: trial "
        f"{best.number}, objective {best.value:.2f}\n" + config.to_toml()
    )
    os.replace(tmp, path)
    print(f"best trial {best.number}: objective {best.value:.2f}")
    for name, value in best.params.items():
        print(f"  {name} = {value!r}")
    print(f"wrote {path}; train with: python -m pylander.train --config {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.search_space:
        print("\n".join(f"{name:<15} {p.describe}" for name, p in default_space().items()))
        return 0
    search = search_from_args(args, parser)
    try:
        import optuna  # noqa: F401  (only to fail early and clearly)
    except ImportError:
        parser.error("optuna is not installed: pip install 'pylander[tune]'")
    search.out.mkdir(parents=True, exist_ok=True)
    # Locked until the search ends, and closed then explicitly: a traceback kept somewhere
    # (by optuna, say) can keep this frame, and so a plain local file, alive after return.
    with open(search.out / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            parser.error(f"--out {search.out}: another search is running there")
        return _run_search(search, args, parser)


def _run_search(search: Search, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from optuna.trial import TrialState

    from pylander.trainer import TrainingInterrupted

    study = prepare_study(search, parser)
    finished = len(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    )
    remaining = args.trials - finished
    print(
        f"study {STUDY_NAME} in {search.out}/study.db: {finished} finished trials, "
        f"{max(remaining, 0)} to run (optuna-dashboard sqlite:///{search.out}/study.db)"
    )
    try:
        if remaining > 0 and args.jobs == 1:
            run_trials(search, remaining)
        elif remaining > 0:
            _run_workers(search, remaining, args.jobs)
    except (KeyboardInterrupt, TrainingInterrupted):
        print("interrupted; rerun the same command to continue the search", file=sys.stderr)
        return 130
    return 0 if write_best(study, search) else 1


def _run_workers(search: Search, trials: int, jobs: int) -> None:
    """Split ``trials`` over ``jobs`` worker processes sharing the study's storage."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that has torch loaded
    shares = [trials // jobs + (i < trials % jobs) for i in range(min(jobs, trials))]
    workers = [
        context.Process(target=_worker, args=(search, n, i, len(shares), os.getpid()))
        for i, n in enumerate(shares)
    ]
    for w in workers:
        w.start()
    try:
        for w in workers:
            w.join()
    finally:
        for w in workers:  # after Ctrl-C they stop by themselves (they got the SIGINT too)
            w.join()
    failed = [w.exitcode for w in workers if w.exitcode]
    if failed:
        print(f"{len(failed)} worker(s) exited with an error (codes {failed})", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
