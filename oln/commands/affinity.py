"""Pairwise-affinity subcommands: train-pa, eval-pa."""

from __future__ import annotations

import argparse
from pathlib import Path

from oln.cli import command, section_of
from oln.commands.common import (
    add_device_argument,
    add_filter_argument,
    add_split_arguments,
    categories_of,
    split_ids,
)
from oln.config import options_from_dict


def _train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train-json", required=True, type=Path, help="COCO json of the training images")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out-dir", required=True, type=Path, help="model.pt, log.jsonl, curve.png, checkpoints/")
    add_split_arguments(p)
    add_filter_argument(p)
    add_device_argument(p)


@command("train-pa", "train the pairwise-affinity network on seen-category masks", "pa_train", _train_args)
def train_pa(args: argparse.Namespace) -> dict:
    from oln.affinity.train import PATrainOptions
    from oln.affinity.train import train_pa as run
    from oln.io import reset_stale_checkpoints

    options = options_from_dict(PATrainOptions, section_of(args), "pa_train")
    options.train.device = args.device
    seen = split_ids(args.seen, categories_of(args.train_json))
    reset_stale_checkpoints(args.out_dir, {"options": options, "seen": seen, "train_json": str(args.train_json),
                                           "filter_empty_gt": args.filter_empty_gt})
    return {"model": str(run(args.train_json, args.image_root, seen, options, args.out_dir,
                             filter_empty_gt=args.filter_empty_gt))}


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained PA model.pt")
    p.add_argument("--val-json", required=True, type=Path,
                   help="COCO json of the evaluation images (all categories annotated)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out-json", required=True, type=Path, help="metrics json to write (seen vs unseen)")
    p.add_argument("--out-grid", required=True, type=Path, help="PNG grid of images, predicted affinity and outlines")
    add_split_arguments(p)
    add_device_argument(p)


@command("eval-pa", "affinity quality (CE, L1, boundary P/R/F) on seen vs unseen objects", "pa_eval",
         _eval_args)
def eval_pa(args: argparse.Namespace) -> dict:
    from oln.affinity.evaluate import PAEvalOptions, evaluate_pa

    options = options_from_dict(PAEvalOptions, section_of(args), "pa_eval")
    options.device = args.device
    categories = categories_of(args.val_json)
    seen, unseen = split_ids(args.seen, categories), split_ids(args.unseen, categories)
    metrics = evaluate_pa(args.model, args.val_json, args.image_root, seen, unseen, options,
                          args.out_json, args.out_grid)
    return {group: metrics[group] for group in ("seen", "unseen")}
