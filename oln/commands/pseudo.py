"""Pseudo-GT subcommands: extract (one shard of one image source), merge."""

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


def _extract_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained PA model.pt")
    p.add_argument("--images-json", required=True, type=Path, help="COCO json of the source (annotations optional)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--source", required=True, help="source name stored in every record")
    p.add_argument("--shard", type=int, default=0, help="this shard's index, 0..num-shards-1 (default: %(default)s)")
    p.add_argument("--num-shards", type=int, default=1, help="shards the source is split into (default: %(default)s)")
    p.add_argument("--workers", type=int, help="grouping processes (default: extract.num_workers)")
    p.add_argument("--proposals", action="store_true",
                   help="write up to extract.proposals_top_k masks as a COCO results json (PA as a detector)")
    p.add_argument("--out", required=True, type=Path,
                   help="shard json of proposal records (with --proposals: COCO results json)")
    add_split_arguments(p)
    add_filter_argument(p)
    add_device_argument(p)


WORKFLOW_KEYS = ("sources", "num_shards", "proposals_top_k")  # read by the Snakefile, not by extract_shard


@command("extract", "PA inference + grouping on one shard of an image source -> ranked masks", "extract",
         _extract_args)
def extract(args: argparse.Namespace) -> dict:
    from oln.pseudo.extract import ExtractOptions, extract_shard

    section = section_of(args)
    options = options_from_dict(ExtractOptions, {k: v for k, v in section.items() if k not in WORKFLOW_KEYS},
                                "extract")
    options.device = args.device
    if args.workers is not None:
        options.num_workers = args.workers
    categories = categories_of(args.images_json)
    seen = split_ids(args.seen, categories) if categories else []
    if not args.proposals:
        return extract_shard(args.model, args.images_json, args.image_root, args.source, args.shard,
                             args.num_shards, options, args.out, gt_category_ids=seen,
                             filter_empty_gt=args.filter_empty_gt and bool(categories))
    # PA proposals as a detector: keep up to proposals_top_k masks, write a COCO results json.
    options.top_k = section["proposals_top_k"]
    options.grouping.max_proposals = None
    records_path = args.out.with_name(args.out.stem + ".records.json")
    stats = extract_shard(args.model, args.images_json, args.image_root, args.source, args.shard,
                          args.num_shards, options, records_path, gt_category_ids=seen)
    return {**stats, "detections": write_proposals_as_results(records_path, args.out)}


def write_proposals_as_results(records_path: Path, out: Path) -> int:
    """Proposal records -> COCO results json (category 1, score, bbox, RLE segmentation)."""
    from oln.io import read_json, write_json

    records = read_json(records_path)["records"]
    results = [{"image_id": r["image_id"], "category_id": 1, "bbox": r["bbox"], "score": r["score"],
                "segmentation": r["segmentation"]} for r in records]
    write_json(out, results)
    return len(results)


def _merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, type=Path, help="annotated training json (its seen GT is kept)")
    p.add_argument("--image-root", required=True, type=Path, help="image root of --gt-json and of the output")
    p.add_argument("--shards", nargs="+", required=True, type=Path, help="shard files of `oln extract`")
    p.add_argument("--out-json", required=True, type=Path, help="merged COCO training json to write")
    p.add_argument("--stats", required=True, type=Path,
                   help="statistics json to write (kept masks, recall of unseen objects)")
    p.add_argument("--gallery", required=True, type=Path, help="PNG gallery of kept pseudo masks to write")
    add_split_arguments(p)


@command("merge", "seen GT + filtered pseudo masks of all shards -> one COCO training json", "merge", _merge_args)
def merge(args: argparse.Namespace) -> dict:
    from oln.pseudo.merge import MergeOptions, merge_pseudo

    options = options_from_dict(MergeOptions, section_of(args), "merge")
    seen = split_ids(args.seen, categories_of(args.gt_json))
    # The training json annotates every category (COCO and synthetic alike), so it also
    # serves as full GT for the recall of unseen objects by the kept pseudo masks.
    return merge_pseudo(args.gt_json, [str(p) for p in args.shards], seen, options, args.out_json, args.stats,
                        args.gallery, args.image_root, full_gt_json=args.gt_json)
