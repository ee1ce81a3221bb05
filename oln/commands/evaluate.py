"""The evaluate subcommand: AR@k of detections on unseen categories."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import add_split_arguments, categories_of, split_ids
from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, type=Path, help="annotations of the evaluated images")
    p.add_argument("--detections", required=True, type=Path, help="COCO results json (or proposal records)")
    p.add_argument("--out", required=True, type=Path, help="evaluation json ({iou_type: metrics})")
    p.add_argument("--workers", type=int, help="processes over images (default: evaluate.num_workers)")
    add_split_arguments(p)


@command("evaluate", "AR@k / AUC on unseen categories (cross-category protocol), box and mask", "evaluate", _args)
def evaluate(args: argparse.Namespace) -> dict:
    from oln.evaluation.recall import EvaluateOptions
    from oln.evaluation.run import evaluate_run

    options = options_from_dict(EvaluateOptions, section_of(args), "evaluate")
    if args.workers is not None:
        options.num_workers = args.workers
    categories = categories_of(args.gt_json)
    seen, unseen = split_ids(args.seen, categories), split_ids(args.unseen, categories)
    log.info("evaluating %s on %s (%d unseen categories)", args.detections, args.gt_json, len(unseen))
    results = evaluate_run(args.gt_json, args.detections, args.out, seen, unseen, options)
    return {t: {k: v for k, v in r.items() if k.startswith("AR@") or k == "AUC"}
            for t, r in results.items() if t != "seen_reference"}
