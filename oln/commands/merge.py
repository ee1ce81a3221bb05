"""The merge subcommand: seen GT + filtered pseudo masks of all shards -> one COCO training json."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import add_device_argument, add_split_arguments, categories_of, split_ids
from oln.commands.registry import command, section_of
from oln.config import NON_OPTION_KEYS, options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, type=Path, help="annotated training json (its seen GT is kept)")
    p.add_argument("--image-root", required=True, type=Path, help="image root of --gt-json and of the output")
    p.add_argument("--shards", nargs="+", required=True, type=Path, help="shard files of `oln extract`")
    p.add_argument("--out-json", required=True, type=Path, help="merged COCO training json to write")
    p.add_argument("--stats", required=True, type=Path,
                   help="statistics json to write (kept masks, recall of unseen objects)")
    p.add_argument("--gallery", required=True, type=Path, help="PNG gallery of kept pseudo masks to write")
    p.add_argument("--ranker-model", type=Path, default=None,
                   help="model.pt of a detector trained on seen GT: re-rank the candidates with it (GGN's OLN ranker)")
    add_device_argument(p)
    add_split_arguments(p)


@command("merge", "seen GT + filtered pseudo masks of all shards -> one COCO training json", "merge", _args)
def merge(args: argparse.Namespace) -> dict:
    from oln.pseudo.merge import MergeOptions, merge_pseudo

    section = {k: v for k, v in section_of(args).items() if k not in NON_OPTION_KEYS["merge"]}
    options = options_from_dict(MergeOptions, section, "merge")
    seen = split_ids(args.seen, categories_of(args.gt_json))
    log.info("merging %d shard files with the seen GT of %s", len(args.shards), args.gt_json)
    # The training json annotates every category (COCO and synthetic alike), so it also
    # serves as full GT for the recall of unseen objects by the kept pseudo masks.
    return merge_pseudo(args.gt_json, [str(p) for p in args.shards], seen, options, args.out_json, args.stats,
                        args.gallery, args.image_root, full_gt_json=args.gt_json, ranker_model=args.ranker_model,
                        device=args.device)
