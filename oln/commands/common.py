"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from oln.io import read_json


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    """--seen / --unseen: a category split name or a JSON list of ids."""
    p.add_argument("--seen", default="seen", help="seen (annotated) categories: split name or JSON id list")
    p.add_argument("--unseen", default="unseen", help="unseen (evaluated) categories: split name or JSON id list")


def add_filter_argument(p: argparse.ArgumentParser) -> None:
    """--filter-empty-gt / --no-filter-empty-gt (the rules pass dataset.filter_empty_gt)."""
    p.add_argument("--filter-empty-gt", action=argparse.BooleanOptionalAction, default=True,
                   help="use only images with an annotation of the seen categories, as GGN "
                        "(default: %(default)s; dataset.filter_empty_gt)")


def add_device_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")


def parse_split(text: str) -> str | list[int]:
    """A split argument: JSON (a quoted name or an id list) or a bare split name."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value if isinstance(value, list | str) else text


def categories_of(json_path: str | Path) -> list[dict]:
    """The `categories` of a COCO json."""
    return read_json(json_path).get("categories", [])


def split_ids(text: str, categories: list[dict]) -> list[int]:
    """Category ids of a --seen/--unseen argument among `categories`."""
    from oln.data.splits import resolve_split

    return resolve_split(parse_split(text), categories)
