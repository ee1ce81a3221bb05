"""The train-detector subcommand: a class-agnostic detector on seen GT (+ pseudo-GT)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from oln.commands.common import (
    add_device_argument,
    add_filter_argument,
    add_split_arguments,
    categories_of,
    split_ids,
)
from oln.commands.registry import command, config_of
from oln.config import ConfigError, merged_runs, options_from_dict, validate_run

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config/config.yaml", help="experiment YAML (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run", help="name of a run in detector.runs (with --config)")
    p.add_argument("--params", help="the run, merged over detector.defaults, as JSON (used by the rules)")
    p.add_argument("--train-json", required=True, type=Path, help="seen GT json, or the merged GT + pseudo json")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out-dir", required=True, type=Path, help="model.pt, log.jsonl, curve.png, checkpoints/")
    p.add_argument("--grouping-model", type=Path,
                   help="arch two_tower: the grouping run's model.pt (detector/<grouping_run>/model.pt)")
    add_split_arguments(p)
    add_filter_argument(p)
    add_device_argument(p)


def run_options(args: argparse.Namespace) -> dict:
    """The run's settings: --params (a run merged over detector.defaults already, as the rules
    pass it), or detector.runs[--run] of --config merged by `oln.config.merged_runs`."""
    if args.params:
        try:
            return validate_run(json.loads(args.params))
        except json.JSONDecodeError as err:
            raise ConfigError(f"--params is not valid JSON ({err})") from err
    if not args.run:
        raise ConfigError("train-detector needs --run NAME (a key of detector.runs) or --params")
    args.section = "detector"
    runs = merged_runs(config_of(args)["detector"])
    if args.run not in runs:
        raise ConfigError(f"detector.runs has no run '{args.run}' (runs: {sorted(runs)})")
    return runs[args.run]


@command("train-detector", "train a class-agnostic detector on seen GT (+ pseudo-GT)", None, _args)
def train_detector(args: argparse.Namespace) -> dict:
    from oln.checkpoints import input_fingerprints, reset_stale_checkpoints
    from oln.code_hash import stage_code_hash
    from oln.detector.train import DetectorTrainOptions
    from oln.detector.train import train_detector as run_training

    run = run_options(args)
    use_pseudo = bool(run.pop("pseudo"))
    grouping_run = run.pop("grouping_run", "<grouping_run>")
    options = options_from_dict(DetectorTrainOptions, run, "detector.runs")
    options.train.device = args.device
    inputs = {"train_json": args.train_json}
    if args.grouping_model:  # two_tower: a retrained grouping run must not resume old checkpoints
        options.detector.grouping_model = str(args.grouping_model)
        inputs["grouping_model"] = args.grouping_model
    # the inputs' content: a merge_pseudo re-run with other settings rewrites the same train json
    settings = {"options": options, "train_json": str(args.train_json), "filter_empty_gt": args.filter_empty_gt,
                "inputs": input_fingerprints(**inputs)}
    if options.detector.arch == "two_tower" and not options.detector.grouping_model:
        raise ConfigError(f"a two_tower run needs --grouping-model (detector/{grouping_run}/model.pt)")
    seen = split_ids(args.seen, categories_of(args.train_json))
    if reset_stale_checkpoints(args.out_dir, {**settings, "seen": seen, "pseudo": use_pseudo},
                               stage_code_hash([__name__])):
        log.info("removed checkpoints of other settings or code in %s", args.out_dir)
    log.info("training %s (pseudo-GT: %s) on %s into %s", options.detector.arch, use_pseudo, args.train_json,
             args.out_dir)
    path = run_training(args.train_json, args.image_root, seen, use_pseudo, options, args.out_dir,
                        filter_empty_gt=args.filter_empty_gt)
    return {"model": str(path)}
