"""The evaluate subcommand: AR@k of detections on unseen categories."""

from __future__ import annotations

import argparse
from pathlib import Path

from oln.cli import command, section_of
from oln.commands.common import add_split_arguments, categories_of, split_ids
from oln.config import options_from_dict


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gt-json", required=True, type=Path, help="annotations of the evaluated images")
    p.add_argument("--detections", required=True, type=Path, help="COCO results json (or proposal records)")
    p.add_argument("--out", required=True, type=Path, help="evaluation json ({iou_type: metrics})")
    p.add_argument("--workers", type=int, help="processes over images (default: evaluate.num_workers)")
    add_split_arguments(p)


@command("evaluate", "AR@k / AUC on unseen categories (cross-category protocol), box and mask", "evaluate", _args)
def evaluate(args: argparse.Namespace) -> dict:
    from oln.evaluation.recall import EvaluateOptions, evaluate_recall, evaluate_to_file
    from oln.io import write_json

    options = options_from_dict(EvaluateOptions, section_of(args), "evaluate")
    if args.workers is not None:
        options.num_workers = args.workers
    categories = categories_of(args.gt_json)
    seen, unseen = split_ids(args.seen, categories), split_ids(args.unseen, categories)
    evaluated = set(seen) | set(unseen)
    # Categories outside seen and unseen (none in the standard splits) are treated as seen:
    # never counted for recall, never using up the budget.
    ignored = sorted(set(seen) | {int(c["id"]) for c in categories if int(c["id"]) not in evaluated})
    results = evaluate_to_file(args.gt_json, args.detections, args.out, ignored, options.iou_types, options)
    if seen:  # AR@100 on seen categories, for reference (unseen ones are then the ignored ones)
        others = sorted({int(c["id"]) for c in categories} - set(seen))
        results["seen_reference"] = {
            iou_type: {"AR@100": evaluate_recall(args.gt_json, args.detections, iou_type, others, max_dets=(100,),
                                                 num_workers=options.num_workers,
                                                 seen_removal=options.seen_removal)["AR@100"]}
            for iou_type in results}
        write_json(args.out, results, indent=2)
    return {t: {k: v for k, v in r.items() if k.startswith("AR@") or k == "AUC"}
            for t, r in results.items() if t != "seen_reference"}
