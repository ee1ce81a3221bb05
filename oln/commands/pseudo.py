"""Pseudo-GT subcommands: extract (one shard of one image source), merge."""

from __future__ import annotations

import argparse
from pathlib import Path

from oln.cli import command, section_of
from oln.commands.common import add_device_argument, add_split_arguments, categories_of, split_ids
from oln.config import options_from_dict


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained PA model.pt")
    p.add_argument("--images-json", required=True, type=Path, help="COCO json of the source (annotations optional)")
    p.add_argument("--image-root", required=True, type=Path)
    p.add_argument("--source", required=True, help="source name stored in every record")
    p.add_argument("--shard", type=int, default=0)
    p.add_argument("--num-shards", type=int, default=1)
    p.add_argument("--workers", type=int, help="grouping processes (default: extract.num_workers)")
    p.add_argument("--proposals", action="store_true",
                   help="write up to extract.proposals_per_image masks as a COCO results json (PA as a detector)")
    p.add_argument("--out", required=True, type=Path)
    add_split_arguments(p)
    add_device_argument(p)


@command("extract", "PA inference + grouping on one shard of an image source -> ranked masks", "extract",
         _extract_args)
def extract(args: argparse.Namespace) -> dict:
    from oln.pseudo.extract import ExtractOptions, extract_proposals, extract_shard

    options = options_from_dict(ExtractOptions, section_of(args), "extract")
    options.device = args.device
    if args.workers is not None:
        options.num_workers = args.workers
    categories = categories_of(args.images_json)
    seen = split_ids(args.seen, categories) if categories else []
    if args.proposals:
        return extract_proposals(args.model, args.images_json, args.image_root, options, args.out)
    return extract_shard(args.model, args.images_json, args.image_root, args.source, args.shard,
                         args.num_shards, options, args.out, gt_category_ids=seen)


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, type=Path, help="annotated training json (seen GT is kept)")
    p.add_argument("--image-root", required=True, type=Path, help="image root of --gt-json")
    p.add_argument("--source", action="append", default=[], metavar="NAME=JSON=IMAGE_ROOT",
                   help="an image source of the shards (its images json and image root)")
    p.add_argument("--shards", nargs="+", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    p.add_argument("--stats", required=True, type=Path)
    p.add_argument("--gallery", required=True, type=Path)
    add_split_arguments(p)


@command("merge", "seen GT + filtered pseudo masks of all shards -> one COCO training json", "merge", _merge_args)
def merge(args: argparse.Namespace) -> dict:
    from oln.pseudo.merge import MergeOptions, merge_pseudo

    options = options_from_dict(MergeOptions, section_of(args), "merge")
    categories = categories_of(args.gt_json)
    seen, unseen = split_ids(args.seen, categories), split_ids(args.unseen, categories)
    sources = {}
    for item in args.source:
        name, images_json, image_root = item.split("=", 2)
        sources[name] = {"json": images_json, "images": image_root}
    return merge_pseudo(args.gt_json, args.image_root, sources, args.shards, seen, unseen, options,
                        args.out_json, args.stats, args.gallery)
