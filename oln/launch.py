"""Start an `oln` subcommand with one process per GPU the job actually has.

The rules ask for `resources.<rule>.gpus` GPUs. On a Slurm node the job sees exactly the
GPUs it was given; on a workstation it may see fewer (or none). `python -m oln.launch
--gpus N -- train-pa ...` decides when the job starts, on the machine it runs on:
min(N, visible GPUs) processes under `torchrun` when that is more than one, else a single
`oln` process (on the one GPU, or on the CPU), with a one-line warning when it uses fewer
GPUs than were asked for.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("oln.launch")


def visible_gpus() -> int:
    """CUDA devices this process can use (CUDA_VISIBLE_DEVICES respected)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_command(requested: int, available: int, oln_args: list[str]) -> list[str]:
    """argv that runs `oln_args` with min(requested, available) processes (torchrun when > 1)."""
    processes = min(requested, available)
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "oln.cli", *oln_args]
    return [sys.executable, "-m", "oln.cli", *oln_args]


def main(argv: list[str] | None = None) -> None:
    """Parse `--gpus N -- ARGS...` and exec the command (never returns)."""
    parser = argparse.ArgumentParser(prog="python -m oln.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, required=True, help="GPUs the rule asks for (resources.<rule>.gpus)")
    parser.add_argument("oln_args", nargs=argparse.REMAINDER, help="-- then the oln subcommand and its arguments")
    args = parser.parse_args(argv)
    oln_args = args.oln_args[1:] if args.oln_args[:1] == ["--"] else args.oln_args
    if not oln_args:
        parser.error("no oln subcommand given after --")
    available = visible_gpus() if args.gpus > 0 else 0
    if args.gpus > available:
        where = f"{available} GPU{'s' if available != 1 else ''}" if available else "no GPU (running on the CPU)"
        print(f"oln.launch: warning: {args.gpus} GPUs requested, this machine has {where}; "
              f"starting {max(1, min(args.gpus, available))} process(es)", file=sys.stderr, flush=True)
    command = launch_command(args.gpus, available, oln_args)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
