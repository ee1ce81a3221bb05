"""The summarize-data subcommand: per-split counts json and a preview grid."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.registry import command

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="append", required=True, metavar="SPLIT=PATH",
                   help="a split's COCO json, e.g. --json train=results/synthetic/data/train.json")
    p.add_argument("--image-root", required=True, type=Path, help="folder the jsons' file_names are relative to")
    p.add_argument("--preview-split", default="train", help="split drawn in the preview")
    p.add_argument("--preview-images", type=int, default=16, help="images in the preview grid (default: %(default)s)")
    p.add_argument("--summary-out", required=True, type=Path, help="summary json to write")
    p.add_argument("--preview-out", required=True, type=Path, help="preview PNG to write")


@command("summarize-data", "per-split/per-category counts json and a preview grid of images with masks",
         None, _args)
def summarize_data(args: argparse.Namespace) -> dict:
    from oln.data.summary import dataset_summary, draw_preview
    from oln.io import write_json

    splits = dict(item.split("=", 1) for item in args.json)
    log.info("summarizing splits %s", sorted(splits))
    write_json(args.summary_out, dataset_summary(splits), indent=1)
    draw_preview(splits[args.preview_split], args.image_root, args.preview_out, num_images=args.preview_images)
    return {"summary": str(args.summary_out), "preview": str(args.preview_out)}
