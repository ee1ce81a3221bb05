"""`oln <stage> ...`: one thin subcommand per pipeline stage.

Each subcommand reads its stage's config section either from a config file
(`--config config/config.yaml --set section.key=value`) or as JSON
(`--params '{...}'`, which is how the Snakemake rules pass it), validates it
against the schema, and calls one library function. Heavy imports happen
inside the commands so `oln --help` stays fast.

Messages go through `logging` (logger `oln` and its children, to stderr with a
timestamp; `-v` shows DEBUG). A subcommand with `--out-dir` holds an exclusive
lock on `<out-dir>/.oln.lock` while it runs, so a second run into the same
folder fails at once instead of interleaving with the first. Clear errors
(bad config, missing input, locked folder, full disk) end with one
`oln <command>: error: ...` line and exit status 2 (1 for a locked folder or a
full disk); `-v` adds the traceback. Only the command's result goes to stdout, as JSON.

The commands live in `oln/commands/`, one module per command; this module imports
them (they never import it) and dispatches.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from oln import __version__
from oln.commands import (  # noqa: F401  (importing a command module registers it)
    eval_pa,
    evaluate,
    extract,
    index_folder,
    make_coco_standin,
    merge,
    plot_curve,
    predict,
    record_config,
    report,
    summarize_data,
    synthesize,
    train_detector,
    train_pa,
)
from oln.commands.registry import COMMANDS
from oln.config import ConfigError
from oln.io import remove_stale_temp_files

log = logging.getLogger("oln")
LOCK_NAME = ".oln.lock"


class OutputLockedError(RuntimeError):
    """Another process holds the lock of an output folder."""


@contextlib.contextmanager
def lock_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive `flock` on `out_dir/.oln.lock` (created) while the block runs.

    The kernel releases the lock when the process ends, even after kill -9.

    Raises:
        OutputLockedError: another process holds it (the message names the folder and its pid).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir / LOCK_NAME
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise OutputLockedError(f"{out_dir} is in use by another oln process (pid {holder}; lock {lock_path}); "
                                    "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def build_parser() -> argparse.ArgumentParser:
    """The `oln` argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="oln", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (and tracebacks of errors)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the oln version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="a pipeline stage; `oln COMMAND --help` lists its arguments")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        section = cmd.section
        if section is not None:
            src = p.add_mutually_exclusive_group()
            src.add_argument("--config", default="config/config.yaml", help="experiment YAML (default: %(default)s)")
            src.add_argument("--params", help=f"the '{section}' config section as JSON (used by the rules)")
            p.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override a config key, e.g. --set synthetic.num_train=50")
            p.set_defaults(section=section)
        cmd.add_arguments(p)
        p.set_defaults(func=cmd.func)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler writing to `sys.stderr` as it is when a record is emitted (tests swap it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    """Log `oln.*` messages to stderr with a timestamp; DEBUG when `verbose`."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        log.addHandler(_StderrHandler())
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def _run(args: argparse.Namespace) -> Any:
    """Call the subcommand, under the lock of its output folder when it has one (rank 0 only).

    Temporary files that a killed earlier run left for this run's output files (`--out*`)
    are removed first; training removes those of its whole output folder itself.
    """
    if os.environ.get("RANK", "0") != "0":
        return args.func(args)
    for name, value in vars(args).items():
        if name.startswith("out") and name != "out_dir" and isinstance(value, Path):
            remove_stale_temp_files(value.parent, names=[value.name])
    out_dir = getattr(args, "out_dir", None)
    if out_dir is None:
        return args.func(args)
    with lock_output_dir(out_dir):
        return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `oln` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    log.debug("oln %s %s: %s", __version__, args.command, {k: v for k, v in vars(args).items() if k != "func"})
    try:
        result = _run(args)
    except (ConfigError, OutputLockedError, OSError, ValueError) as err:
        code = 2 if isinstance(err, (ConfigError, ValueError, FileNotFoundError)) else 1
        log.debug("traceback of the error below", exc_info=True)
        log.error("oln %s: error: %s", args.command, err)
        return code
    if isinstance(result, dict):
        print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":  # `python -m oln.cli` (the multi-GPU launcher runs this)
    sys.exit(main())
