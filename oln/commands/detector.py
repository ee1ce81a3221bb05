"""Detector subcommands: train-detector, predict."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oln.cli import command, config_of, section_of
from oln.commands.common import (
    add_device_argument,
    add_filter_argument,
    add_split_arguments,
    categories_of,
    split_ids,
)
from oln.config import ConfigError, options_from_dict


def _train_args(p: argparse.ArgumentParser) -> None:
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


def _file_sha256(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run_options(args: argparse.Namespace) -> dict:
    """The run's settings: --params JSON, or detector.runs[--run] merged over detector.defaults."""
    from oln.config import deep_merge, validate_config

    if args.params:
        run = json.loads(args.params)
        validate_config({"detector": {"runs": {"run": run}}})
        return run
    if not args.run:
        raise ConfigError("train-detector needs --run NAME (a key of detector.runs) or --params")
    args.section = "detector"
    detector = config_of(args)["detector"]
    if args.run not in detector["runs"]:
        raise ConfigError(f"detector.runs has no run '{args.run}' (runs: {sorted(detector['runs'])})")
    return deep_merge(detector["defaults"], detector["runs"][args.run])


@command("train-detector", "train a class-agnostic detector on seen GT (+ pseudo-GT)", None, _train_args)
def train_detector(args: argparse.Namespace) -> dict:
    from oln.detector.train import DetectorTrainOptions
    from oln.detector.train import train_detector as run_training
    from oln.io import reset_stale_checkpoints

    run = run_options(args)
    use_pseudo = bool(run.pop("pseudo"))
    grouping_run = run.pop("grouping_run", "<grouping_run>")
    options = options_from_dict(DetectorTrainOptions, run, "detector.runs")
    options.train.device = args.device
    settings = {"options": options, "train_json": str(args.train_json), "filter_empty_gt": args.filter_empty_gt}
    if args.grouping_model:  # two_tower: a retrained grouping run must not resume old checkpoints
        options.detector.grouping_model = str(args.grouping_model)
        settings["grouping_model_sha256"] = _file_sha256(args.grouping_model)
    if options.detector.arch == "two_tower" and not options.detector.grouping_model:
        raise ConfigError(f"a two_tower run needs --grouping-model (detector/{grouping_run}/model.pt)")
    seen = split_ids(args.seen, categories_of(args.train_json))
    reset_stale_checkpoints(args.out_dir, {**settings, "seen": seen, "pseudo": use_pseudo})
    path = run_training(args.train_json, args.image_root, seen, use_pseudo, options, args.out_dir,
                        filter_empty_gt=args.filter_empty_gt)
    return {"model": str(path)}


def _predict_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained detector model.pt")
    p.add_argument("--images-json", required=True, type=Path,
                   help="COCO json of the images to run on (annotations not used)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out", required=True, type=Path, help="COCO results json")
    add_device_argument(p)


@command("predict", "detections on a COCO json's images -> COCO results json (boxes + RLE masks)", "predict",
         _predict_args)
def predict(args: argparse.Namespace) -> dict:
    from oln.detector.predict import PredictOptions
    from oln.detector.predict import predict as run

    options = options_from_dict(PredictOptions, section_of(args), "predict")
    options.device = args.device
    return run(args.model, args.images_json, args.image_root, options, args.out)
