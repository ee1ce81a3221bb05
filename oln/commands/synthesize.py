"""The synthesize subcommand: generate the synthetic open-world dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (jsons + images/)")


@command("synthesize", "generate the synthetic open-world dataset (train/val/unlabeled)", "synthetic", _args)
def synthesize(args: argparse.Namespace) -> dict:
    from oln.data.synthetic import SyntheticOptions
    from oln.data.synthetic import synthesize as run

    options = options_from_dict(SyntheticOptions, section_of(args), "synthetic")
    log.info("synthesizing %d train, %d val, %d unlabeled images into %s", options.num_train, options.num_val,
             options.num_unlabeled, args.out)
    return run(args.out, options)
