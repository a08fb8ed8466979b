"""``python -m pylander.train``: train a policy; every flag is a field of :class:`TrainConfig`.

Examples::

    python -m pylander.train                                  # LunarLander-v3, default settings
    python -m pylander.train --seed 3 --stop-when-solved
    python -m pylander.train --algo notebook                  # the notebook, exactly
    python -m pylander.train --env CartPole-v1 --total-steps 100000
    python -m pylander.train --resume runs/LunarLander-v3-reinforce-seed1
    python -m pylander.train --procs 2                        # 2 data-parallel processes
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from pylander.algorithms import ALIASES
from pylander.config import TrainConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pylander.train",
        description="Train a policy-gradient agent on a gymnasium env (LunarLander-v3 by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="load settings from a config.toml first")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="continue the run in DIR from its checkpoint (flags given override)")
    parser.add_argument("--force", action="store_true",
                        help="start afresh in an --out directory that holds another run")
    parser.add_argument("--procs", type=int, default=1,
                        help="data-parallel processes on this machine (torchrun does the same)")
    hints = get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = hints[f.name]
        kwargs = {"dest": f.name, "default": None,
                  "help": f"{f.metadata['help']} (default: {getattr(defaults, f.name)})"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(kind) is list:
            kwargs.update(type=int, nargs="+")
        elif f.metadata.get("choices") or get_args(kind):
            kwargs["choices"] = f.metadata.get("choices") or get_args(kind)
        else:
            kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)
    parser.set_defaults(**{f.name: None for f in dataclasses.fields(TrainConfig)})
    # ArgumentDefaultsHelpFormatter would print "None" for the sentinel defaults above.
    parser.formatter_class = argparse.HelpFormatter
    return parser


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TrainConfig:
    """Defaults < --config file (or the resumed run's config) < flags given on the command line."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if getattr(args, f.name) is not None}
    if args.resume is not None:
        if args.force:
            parser.error("--resume continues a run and --force replaces one; give only one")
        if args.config is not None:
            parser.error("--resume takes its settings from the run's own config.toml; give "
                         "flags to change some, not --config")
        if args.out is not None and Path(args.out).resolve() != args.resume.resolve():
            parser.error(f"--resume {args.resume} continues the run in that directory; drop "
                         f"--out {args.out}")
        if not (args.resume / "config.toml").is_file():
            parser.error(f"--resume {args.resume}: no run there (no config.toml)")
    if given.get("algo") in ALIASES:
        print(f"pylander: --algo {given['algo']} is now called --algo {ALIASES[given['algo']]}",
              file=sys.stderr)
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


def check_env(env_id: str, parser: argparse.ArgumentParser) -> None:
    """Fail with a usage error, before anything is written, for an env pylander cannot train."""
    import gymnasium as gym

    from pylander.envs import check_spaces, resolve_env_id

    try:
        env_id = resolve_env_id(env_id, announce=False)
    except ValueError as exc:
        parser.error(f"--env: {exc}")
    try:
        env = gym.make(env_id)
    except Exception as exc:  # missing extras (DependencyNotInstalled), bad kwargs, ...
        parser.error(f"--env {env_id} cannot be created: {type(exc).__name__}: {exc}")
    try:
        check_spaces(env, env_id)
    except ValueError as exc:
        parser.error(f"--env: {exc}")
    finally:
        env.close()


def prepare_out_dir(out: Path, *, resume: bool, force: bool, parser: argparse.ArgumentParser) -> None:
    """Refuse to mix two runs in one directory, and fail early if it cannot be written."""
    if resume:
        if not (out / "checkpoint.pt").is_file():
            parser.error(f"--resume {out}: no checkpoint.pt there to resume from (the run stopped "
                         f"before its first checkpoint); start it again with --out {out} --force")
        return
    held = [name for name in RUN_MARKERS if (out / name).exists()]
    if held and not force:
        parser.error(f"--out {out} already holds a run ({', '.join(held)}); use --resume {out} "
                     "to continue it, --force to replace it, or another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        parser.error(f"--out {out} is not writable: {exc.strerror or exc}")
    if force:
        for path in out.iterdir():
            if path.name in RUN_MARKERS or path.name.startswith("events.out.tfevents"):
                path.unlink() if path.is_file() else shutil.rmtree(path)


RUN_MARKERS = ["config.toml", "checkpoint.pt", "metrics.csv", "summary.json", "best.pt",
               "learning_curve.png"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.procs < 1:
        parser.error(f"--procs must be >= 1, got {args.procs}")
    if args.procs > 1 and "WORLD_SIZE" not in os.environ:
        from pylander.launch import launch_local

        return launch_local(args.procs, sys.argv[1:] if argv is None else argv)
    config = config_from_args(args, parser)
    check_env(config.env_id, parser)
    out = config.resolved_out()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    if main_rank:
        prepare_out_dir(out, resume=args.resume is not None, force=args.force, parser=parser)

    # Imported late so that `--help` and argument errors answer without loading torch.
    import torch

    from pylander.algorithms import NonFiniteError
    from pylander.checkpoint import CheckpointError
    from pylander.distributed import DistributedError, init_from_env, shutdown
    from pylander.trainer import TrainingInterrupted, resolve_device, train

    torch.set_num_threads(config.torch_threads)
    try:
        init_from_env(resolve_device(config.device))
        train(config, resume=args.resume is not None)
    except TrainingInterrupted as stop:
        if main_rank:
            print(stop, file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # a second signal, or one before training started
        saved = out / "checkpoint.pt"
        hint = (f"{saved} holds the last checkpoint saved. Resume with: python -m pylander.train "
                f"--resume {out}" if saved.is_file() else "no checkpoint was saved")
        if main_rank:
            print(f"interrupted at once; {hint}", file=sys.stderr)
        return 128 + signal.SIGINT
    # OSError: e.g. the disk filled up or the run directory went away.
    except (ValueError, CheckpointError, NonFiniteError, DistributedError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
