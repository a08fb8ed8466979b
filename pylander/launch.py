"""``--procs N``: start N data-parallel ranks on this machine through torchrun's own launcher."""

from __future__ import annotations

from torch.distributed.run import get_args_parser, run


def launch_local(procs: int, argv: list[str]) -> int:
    """Run ``python -m pylander.train`` (without ``--procs``) as ``procs`` local ranks."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--procs":
            del args[i:i + 2]
            break
        if arg.startswith("--procs="):
            del args[i]
            break
    torchrun = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={procs}", "--module", "pylander.train", *args])
    try:
        run(torchrun)
    except Exception as exc:  # torchrun's ChildFailedError lists each failed rank
        print(f"error: distributed run failed: {exc}")
        return 1
    return 0
