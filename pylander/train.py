"""``python -m pylander.train``: train a policy; every flag is a field of :class:`TrainConfig`.

Examples::

    python -m pylander.train                                  # LunarLander-v3, default settings
    python -m pylander.train --seed 3 --stop-when-solved
    python -m pylander.train --algo notebook                  # the notebook, exactly
    python -m pylander.train --env CartPole-v1 --total-steps 100000
    python -m pylander.train --env my_envs:Maze-v0 --env-kwargs size=8   # a custom env
    python -m pylander.train --resume runs/LunarLander-v3-reinforce-seed1
    python -m pylander.train --procs 2                        # 2 data-parallel processes

Every check that can fail is made before anything is written: settings, the env, the device,
and whether the run directory is free (:mod:`pylander.rundir`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import types
from pathlib import Path
from typing import Any, NoReturn, get_args, get_origin, get_type_hints

import tomllib

from pylander import __version__, rundir
from pylander.algorithms import ALIASES, REGISTRY
from pylander.config import TrainConfig
from pylander.envs import ALIASES as ENV_ALIASES
from pylander.launch import LAUNCHED_ENV, launch_local


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors print one short usage line, not every flag."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"usage: {self.prog} [options]; see --help\n{self.prog}: error: {message}\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m pylander.train",
        description="Train a policy-gradient agent on a gymnasium env (LunarLander-v3 by default).",
    )
    parser.add_argument("--version", action="version", version=f"pylander {__version__}")
    groups = {
        name: parser.add_argument_group(name)
        for name in ["run", "environments", "policy gradient", "evaluation, logging, checkpoints"]
    }
    run = groups["run"]
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="load settings from a TOML file first (a run's config.toml will do); "
        "flags given override them; the run goes to --out, or its own default",
    )
    runtime = ", ".join(
        flag(f) for f in dataclasses.fields(TrainConfig) if f.name in TrainConfig.runtime_fields()
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="DIR",
        help="continue the run in DIR from its checkpoint. Flags given override its "
        f"settings and are saved in its config.toml, except {runtime}, which apply "
        "to this invocation only. A finished run needs a larger --total-steps",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="start afresh in an --out directory that holds another run",
    )
    run.add_argument(
        "--procs",
        type=int,
        default=1,
        help="data-parallel processes on this machine (torchrun does the same)",
    )
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        default = getattr(defaults, f.name)
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": None,
            "help": f"{f.metadata['help']}" + (f" (default: {default})" if default != "" else ""),
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is list:
            kwargs.update(type=int, nargs="+")
        elif get_origin(kind) is dict:
            kwargs.update(type=env_kwarg, nargs="*", metavar="KEY=VALUE")
        elif f.metadata.get("choices") or get_args(kind):
            kwargs["choices"] = f.metadata.get("choices") or get_args(kind)
        else:
            kwargs["type"] = kind
        groups[f.metadata["group"]].add_argument(flag(f), **kwargs)
    return parser


def flag(f: dataclasses.Field) -> str:
    """The command-line flag of config field ``f``."""
    return f.metadata.get("flag", "--" + f.name.replace("_", "-"))


def env_kwarg(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--env-kwargs``: VALUE as a TOML or JSON literal if it is one (``8``,
    ``true``, ``0.5``, ``[1, 2]``, ``"x"``), else as the string itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for parse in (lambda r: tomllib.loads(f"value = {r}")["value"], json.loads):
        try:
            value = parse(raw)
        except ValueError:  # TOMLDecodeError and JSONDecodeError are ValueErrors
            continue
        if isinstance(value, (bool, int, float, str, list, dict)) or value is None:
            return key.strip(), value  # None (JSON null) is refused, naming it, by the config
    return key.strip(), raw


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TrainConfig:
    """Defaults < --config file (or the resumed run's config) < flags given on the command line."""
    given = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if getattr(args, f.name) is not None
    }
    if "env_kwargs" in given:
        given["env_kwargs"] = dict(given["env_kwargs"])
    if args.resume is not None:
        if args.force:
            parser.error("--resume continues a run and --force replaces one; give only one")
        if args.config is not None:
            parser.error(
                "--resume takes its settings from the run's own config.toml; give "
                "flags to change some, not --config"
            )
        if args.out is not None and Path(args.out).resolve() != args.resume.resolve():
            parser.error(
                f"--resume {args.resume} continues the run in that directory; drop --out {args.out}"
            )
        if not (args.resume / "config.toml").is_file():
            parser.error(f"--resume {args.resume}: no run there (no config.toml)")
    if int(os.environ.get("RANK", "0")) == 0 and LAUNCHED_ENV not in os.environ:
        if given.get("algo") in ALIASES:
            print(
                f"pylander: --algo {given['algo']} is now called --algo {ALIASES[given['algo']]}",
                file=sys.stderr,
            )
        if given.get("env_id") in ENV_ALIASES:
            print(
                f"pylander: {given['env_id']} is not in gymnasium 1.x; using "
                f"{ENV_ALIASES[given['env_id']]} (same task)."
            )
    try:
        if args.resume is not None:
            config = TrainConfig.load(args.resume / "config.toml")
            config = dataclasses.replace(config, **{**given, "out": str(args.resume)})
        elif args.config is not None:
            config = TrainConfig.load(args.config, **given)
        else:
            config = TrainConfig(**given)
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 <= config.seed < MAX_SEED:
        parser.error(f"seed must be in [0, 2**63), got {config.seed}")
    return config


MAX_SEED = 2**63
"""Seeds (plus the small offsets added for ranks and evaluation) must fit torch's uint64 seeds."""


def check_env(config: TrainConfig, parser: argparse.ArgumentParser) -> None:
    """Fail with a usage error, before anything is written, for an env pylander cannot train."""
    from pylander.envs import check_trainable

    try:
        check_trainable(config.env_id, config.env_kwargs)
    except ValueError as exc:
        parser.error(f"--env: {exc}")


def check_launch(config: TrainConfig, procs: int, parser: argparse.ArgumentParser) -> None:
    """Refuse a device this machine lacks, or an algorithm that cannot run on several ranks."""
    from pylander.trainer import resolve_device

    try:
        resolve_device(config.device)
    except ValueError as exc:
        parser.error(str(exc))
    ranks = max(procs, int(os.environ.get("WORLD_SIZE", "1")))
    if ranks > 1 and REGISTRY[config.algo].single_process:
        parser.error(
            f"--algo {config.algo} trains in a single process; run it without --procs/torchrun"
        )


def check_out_dir(
    out: Path, config: TrainConfig, *, resume: bool, force: bool, parser: argparse.ArgumentParser
) -> None:
    """Refuse to mix two runs in one directory, or to resume one that is finished."""
    try:
        rundir.check(out, config, resume=resume, force=force)
    except rundir.RunDirectoryError as exc:
        parser.error(str(exc))


def claim_out_dir(
    out: Path,
    config: TrainConfig,
    stack: contextlib.ExitStack,
    *,
    resume: bool,
    force: bool,
    parser: argparse.ArgumentParser,
) -> None:
    """Hold ``out`` until ``stack`` closes (rundir.claim), then check it and clear it for
    ``--force``; any refusal is a usage error, and writes nothing."""
    where = "--resume" if resume else "--out"
    try:
        stack.enter_context(rundir.claim(out))
    except rundir.RunDirectoryError as exc:
        parser.error(f"{where} {exc}")
    except OSError as exc:
        parser.error(f"--out {out} is not writable: {exc.strerror or exc}")
    check_out_dir(out, config, resume=resume, force=force, parser=parser)
    if force:
        rundir.clear(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error(f"--procs must be >= 1, got {args.procs}")
    config = config_from_args(args, parser)
    check_env(config, parser)
    check_launch(config, args.procs, parser)
    out, resume = config.resolved_out(), args.resume is not None
    if args.procs > 1 and "WORLD_SIZE" not in os.environ:
        # The ranks claim the directory (rank 0 does); here it is only checked, to refuse once.
        holder = rundir.holder(out)
        if holder:
            parser.error(
                f"{'--resume' if resume else '--out'} {out} is in use by another "
                f"training run ({holder})"
            )
        check_out_dir(out, config, resume=resume, force=args.force, parser=parser)
        return launch_local(args.procs, argv)
    main_rank = int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as stack:
        if main_rank:
            claim_out_dir(out, config, stack, resume=resume, force=args.force, parser=parser)
        return run_training(config, resume=resume, main_rank=main_rank)


def run_training(config: TrainConfig, *, resume: bool, main_rank: bool) -> int:
    """Train in this process (one rank of several, under torchrun); returns the exit status."""

    from pylander.algorithms import NonFiniteError
    from pylander.checkpoint import CheckpointError
    from pylander.distributed import DistributedError, init_from_env, shutdown
    from pylander.threads import training_threads, using_threads
    from pylander.trainer import TrainingInterrupted, resolve_device, train

    out = config.resolved_out()
    # Restored after: main() also runs inside other processes (the tests, a notebook), whose
    # forked children would hang on more threads than they had (see pylander.threads).
    with using_threads(training_threads(config)):
        try:
            init_from_env(resolve_device(config.device))
            train(config, resume=resume)
        except TrainingInterrupted as stop:
            if main_rank:
                print(stop, file=sys.stderr)
            return 128 + stop.signum
        except KeyboardInterrupt:  # a second signal, or one before training started
            saved = out / "checkpoint.pt"
            hint = (
                f"{saved} holds the last checkpoint saved. Resume with: python -m pylander.train "
                f"--resume {out}"
                if saved.is_file()
                else "no checkpoint was saved"
            )
            if main_rank:
                print(f"interrupted at once; {hint}", file=sys.stderr)
            return 128 + signal.SIGINT
        # OSError: e.g. the disk filled up (checkpoint.atomic_write names the file) or the run
        # directory went away. RunDirectoryError is a ValueError.
        except (ValueError, CheckpointError, NonFiniteError, DistributedError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            shutdown()
        return 0


class _CallableModule(types.ModuleType):
    """``pylander.train`` names both this command-line module and the API's :func:`train`
    (``from pylander import train``). Importing the module rebinds the package's attribute to
    it, so the module is callable too, as the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from pylander.api import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    sys.exit(main())
