"""The index-folder subcommand: an images-only COCO json of a folder of unlabeled images."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from oln.commands.registry import command

log = logging.getLogger(__name__)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", required=True, type=Path, help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="images-only COCO json to write")


@command("index-folder", "write an images-only COCO json for a folder of unlabeled images", None, _args)
def index_folder(args: argparse.Namespace) -> dict:
    from oln.data.coco import images_json_from_folder

    log.info("indexing the images under %s", args.folder)
    return images_json_from_folder(args.folder, args.out)
