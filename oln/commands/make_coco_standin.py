"""The make-coco-standin subcommand: a small COCO-2017-format dataset for CI of the COCO path."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.registry import command

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (annotations/, train2017/, ...)")
    p.add_argument("--num-train", type=int, default=24, help="annotated train2017 images (default: %(default)s)")
    p.add_argument("--num-val", type=int, default=12, help="annotated val2017 images (default: %(default)s)")
    p.add_argument("--num-unlabeled", type=int, default=8,
                   help="images in unlabeled/, in every decoding mode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the stand-in images (default: %(default)s)")


@command("make-coco-standin", "write a small COCO-2017-format stand-in dataset (CI for the COCO path)", None, _args)
def make_coco_standin(args: argparse.Namespace) -> dict:
    from oln.data.standin import make_coco_standin as run

    log.info("writing a COCO stand-in into %s", args.out_dir)
    return run(args.out_dir, num_train=args.num_train, num_val=args.num_val, num_unlabeled=args.num_unlabeled,
               seed=args.seed)
