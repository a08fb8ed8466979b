"""``--procs N``: start N data-parallel ranks on this machine through torchrun's own launcher.

``python -m pylander.train --procs N ARGS`` is ``torchrun --standalone --nproc-per-node N -m
pylander.train ARGS``: the ranks rendezvous on a free localhost port, rank 0 logs, evaluates and
writes the run directory, and if any rank fails the launcher stops the others and returns that
rank's exit code (130 after Ctrl-C, once the ranks have saved a checkpoint, as a single process
does).
"""

from __future__ import annotations

import os
import sys

LAUNCHED_ENV = "PYLANDER_LAUNCHED"
"""Set for the ranks this launcher starts: the launcher has checked the settings and printed any
notes about them, so the ranks do not repeat them."""


def strip_procs(argv: list[str]) -> list[str]:
    """``argv`` without ``--procs N`` / ``--procs=N`` (the ranks must not relaunch themselves)."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--procs":
            del args[i : i + 2]
            break
        if arg.startswith("--procs="):
            del args[i]
            break
    return args


def launch_local(procs: int, argv: list[str]) -> int:
    """Run ``python -m pylander.train`` (without ``--procs``) as ``procs`` local ranks."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # Each rank sets its own torch threads (--torch-threads); this also quiets torchrun's banner.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torchrun = get_args_parser().parse_args(
        [
            "--standalone",
            f"--nproc-per-node={procs}",
            "--module",
            "pylander.train",
            *strip_procs(argv),
        ]
    )
    os.environ[LAUNCHED_ENV] = "1"  # the ranks need not repeat the notes printed here
    try:
        run(torchrun)
    except ChildFailedError as exc:
        # The failing rank printed its own error; name it, and pass its exit code on.
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
        print(
            f"error: rank {rank} of {procs} exited with code {code}; the launcher stopped the "
            "others",
            file=sys.stderr,
        )
        return code
    except SignalException as exc:  # Ctrl-C / SIGTERM reached the launcher; ranks were told too
        return 128 + int(exc.sigval)
    finally:
        os.environ.pop(LAUNCHED_ENV, None)
    return 0
