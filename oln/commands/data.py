"""Data subcommands: synthesize, summarize-data, index-folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from oln.cli import command, section_of
from oln.config import options_from_dict


def _synthesize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="output folder (jsons + images/)")


@command("synthesize", "generate the synthetic open-world dataset (train/val/unlabeled)", "synthetic",
         _synthesize_args)
def synthesize(args: argparse.Namespace) -> dict:
    from oln.data.synthetic import SyntheticOptions
    from oln.data.synthetic import synthesize as run

    options = options_from_dict(SyntheticOptions, section_of(args), "synthetic")
    return run(args.out, options)


def _summarize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="append", required=True, metavar="SPLIT=PATH",
                   help="a split's COCO json, e.g. --json train=results/synthetic/data/train.json")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--preview-split", default="train", help="split drawn in the preview")
    p.add_argument("--preview-images", type=int, default=16)
    p.add_argument("--summary-out", required=True, type=Path)
    p.add_argument("--preview-out", required=True, type=Path)


@command("summarize-data", "per-split/per-category counts json and a preview grid of images with masks",
         None, _summarize_args)
def summarize_data(args: argparse.Namespace) -> dict:
    from oln.data.summary import dataset_summary, draw_preview
    from oln.io import write_json

    splits = dict(item.split("=", 1) for item in args.json)
    summary = dataset_summary(splits)
    write_json(args.summary_out, summary, indent=1)
    draw_preview(splits[args.preview_split], args.image_root, args.preview_out, num_images=args.preview_images)
    return {"summary": str(args.summary_out), "preview": str(args.preview_out)}


def _index_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", required=True, type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="images-only COCO json to write")


@command("index-folder", "write an images-only COCO json for a folder of unlabeled images", None, _index_args)
def index_folder(args: argparse.Namespace) -> dict:
    from oln.data.coco import images_json_from_folder

    return images_json_from_folder(args.folder, args.out)
