"""The train-pa subcommand: train the pairwise-affinity network on seen-category masks."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import (
    add_device_argument,
    add_filter_argument,
    add_split_arguments,
    categories_of,
    split_ids,
)
from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-json", required=True, type=Path, help="COCO json of the training images")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out-dir", required=True, type=Path, help="model.pt, log.jsonl, curve.png, checkpoints/")
    add_split_arguments(p)
    add_filter_argument(p)
    add_device_argument(p)


@command("train-pa", "train the pairwise-affinity network on seen-category masks", "pa_train", _args)
def train_pa(args: argparse.Namespace) -> dict:
    from oln.affinity.train import PATrainOptions
    from oln.affinity.train import train_pa as run
    from oln.checkpoints import input_fingerprints, reset_stale_checkpoints
    from oln.code_hash import stage_code_hash

    options = options_from_dict(PATrainOptions, section_of(args), "pa_train")
    options.train.device = args.device
    seen = split_ids(args.seen, categories_of(args.train_json))
    settings = {"options": options, "seen": seen, "train_json": str(args.train_json),
                "filter_empty_gt": args.filter_empty_gt, "inputs": input_fingerprints(train_json=args.train_json)}
    if reset_stale_checkpoints(args.out_dir, settings, stage_code_hash([__name__])):
        log.info("removed checkpoints of other settings or code in %s", args.out_dir)
    log.info("training PA on %s (%d seen categories) into %s", args.train_json, len(seen), args.out_dir)
    return {"model": str(run(args.train_json, args.image_root, seen, options, args.out_dir,
                             filter_empty_gt=args.filter_empty_gt))}
