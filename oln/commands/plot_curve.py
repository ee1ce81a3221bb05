"""The plot-curve subcommand: loss terms (and lr) of one training log as a PNG."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.registry import command

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", type=Path, help="a training log.jsonl")
    p.add_argument("--keys", nargs="+", help="log fields to draw (default: every loss term)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--title", default="", help="plot title")


@command("plot-curve", "plot loss terms (and lr) of a training log.jsonl", None, _args)
def plot_curve(args: argparse.Namespace) -> dict:
    from oln.plots import plot_curve as run

    log.info("plotting %s", args.log)
    run(args.log, args.out, args.keys, args.title)
    return {"plot": str(args.out)}
