"""Data subcommands: synthesize, summarize-data, index-folder, make-coco-standin."""

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
    p.add_argument("--image-root", required=True, type=Path, help="folder the jsons' file_names are relative to")
    p.add_argument("--preview-split", default="train", help="split drawn in the preview")
    p.add_argument("--preview-images", type=int, default=16, help="images in the preview grid (default: %(default)s)")
    p.add_argument("--summary-out", required=True, type=Path, help="summary json to write")
    p.add_argument("--preview-out", required=True, type=Path, help="preview PNG to write")


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


def _standin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="output folder (annotations/, train2017/, ...)")
    p.add_argument("--num-train", type=int, default=24, help="annotated train2017 images (default: %(default)s)")
    p.add_argument("--num-val", type=int, default=12, help="annotated val2017 images (default: %(default)s)")
    p.add_argument("--num-unlabeled", type=int, default=8,
                   help="images in unlabeled/, in every decoding mode (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the stand-in images (default: %(default)s)")


@command("make-coco-standin", "write a small COCO-2017-format stand-in dataset (CI for the COCO path)", None,
         _standin_args)
def make_coco_standin(args: argparse.Namespace) -> dict:
    from oln.data.standin import make_coco_standin as run

    return run(args.out_dir, num_train=args.num_train, num_val=args.num_val, num_unlabeled=args.num_unlabeled,
               seed=args.seed)
