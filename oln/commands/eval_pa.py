"""The eval-pa subcommand: affinity quality on seen vs unseen objects."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import add_device_argument, add_split_arguments, categories_of, split_ids
from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained PA model.pt")
    p.add_argument("--val-json", required=True, type=Path,
                   help="COCO json of the evaluation images (all categories annotated)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out-json", required=True, type=Path, help="metrics json to write (seen vs unseen)")
    p.add_argument("--out-grid", required=True, type=Path, help="PNG grid of images, predicted affinity and outlines")
    add_split_arguments(p)
    add_device_argument(p)


@command("eval-pa", "affinity quality (CE, L1, boundary P/R/F) on seen vs unseen objects", "pa_eval", _args)
def eval_pa(args: argparse.Namespace) -> dict:
    from oln.affinity.evaluate import PAEvalOptions, evaluate_pa

    options = options_from_dict(PAEvalOptions, section_of(args), "pa_eval")
    options.device = args.device
    categories = categories_of(args.val_json)
    seen, unseen = split_ids(args.seen, categories), split_ids(args.unseen, categories)
    log.info("evaluating %s on %s (%d seen, %d unseen categories)", args.model, args.val_json, len(seen), len(unseen))
    metrics = evaluate_pa(args.model, args.val_json, args.image_root, seen, unseen, options,
                          args.out_json, args.out_grid)
    return {group: metrics[group] for group in ("seen", "unseen")}
