"""The predict subcommand: detections on a COCO json's images as a COCO results json."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.common import add_device_argument
from oln.commands.registry import command, section_of
from oln.config import options_from_dict

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, type=Path, help="trained detector model.pt")
    p.add_argument("--images-json", required=True, type=Path,
                   help="COCO json of the images to run on (annotations not used)")
    p.add_argument("--image-root", required=True, type=Path, help="folder the json's file_names are relative to")
    p.add_argument("--out", required=True, type=Path, help="COCO results json")
    p.add_argument("--workers", type=int, help="image-decoding processes (default: predict.num_workers)")
    add_device_argument(p)


@command("predict", "detections on a COCO json's images -> COCO results json (boxes + RLE masks)", "predict",
         _args)
def predict(args: argparse.Namespace) -> dict:
    from oln.detector.predict import PredictOptions
    from oln.detector.predict import predict as run

    options = options_from_dict(PredictOptions, section_of(args), "predict")
    options.device = args.device
    if args.workers is not None:
        options.num_workers = args.workers
    log.info("predicting with %s on %s", args.model, args.images_json)
    return run(args.model, args.images_json, args.image_root, options, args.out)
