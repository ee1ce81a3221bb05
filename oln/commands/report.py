"""The report subcommand: summary + figures of an experiment."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import add_split_arguments, categories_of, split_ids
from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exp-dir", required=True, type=Path, help="results/<experiment>")
    p.add_argument("--val-json", required=True, type=Path, help="COCO json of the evaluation images")
    p.add_argument("--image-root", required=True, type=Path, help="image root of --val-json")
    p.add_argument("--replicate-dirs", nargs="*", type=Path, default=[],
                   help="results/<experiment>/seed-<k> branches (replicates_from: synthesis): their evaluations "
                        "join the summary as <name>@seed<k>")
    add_split_arguments(p)


@command("report", "summary.csv/.md and plots/ of an experiment's results", "report", _args)
def report(args: argparse.Namespace) -> dict:
    from oln.report import ReportOptions, report_experiment

    options = options_from_dict(ReportOptions, section_of(args), "report")
    unseen = split_ids(args.unseen, categories_of(args.val_json))
    log.info("reporting %s", args.exp_dir)
    return report_experiment(args.exp_dir, args.val_json, args.image_root, unseen, options, args.replicate_dirs)
