"""The extract subcommand: PA inference + grouping on one shard of an image source (or PA proposals)."""

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
from oln.config import extract_settings, options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
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


@command("extract", "PA inference + grouping on one shard of an image source -> ranked masks", "extract", _args)
def extract(args: argparse.Namespace) -> dict:
    from oln.pseudo.extract import ExtractOptions, extract_shard
    from oln.pseudo.proposals import extract_proposals

    settings = extract_settings(section_of(args), proposals=args.proposals)
    top_k = settings.pop("proposals_top_k", None)
    options = options_from_dict(ExtractOptions, settings, "extract")
    options.device = args.device
    if args.workers is not None:
        options.num_workers = args.workers
    categories = categories_of(args.images_json)
    seen = split_ids(args.seen, categories) if categories else []
    log.info("%s: shard %d of %d of %s", "PA proposals" if args.proposals else "pseudo-GT", args.shard,
             args.num_shards, args.images_json)
    if args.proposals:
        return extract_proposals(args.model, args.images_json, args.image_root, options, top_k, args.out,
                                 gt_category_ids=seen, source=args.source, shard=args.shard,
                                 num_shards=args.num_shards)
    return extract_shard(args.model, args.images_json, args.image_root, args.source, args.shard, args.num_shards,
                         options, args.out, gt_category_ids=seen,
                         filter_empty_gt=args.filter_empty_gt and bool(categories))
