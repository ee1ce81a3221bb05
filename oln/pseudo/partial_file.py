"""The progress file of a shard (`<shard>.partial.jsonl`): what lets a killed extraction resume.

Its first line is a fingerprint of the shard's settings; each further line is one finished
image (`image_id`, `skipped`, `records`, `seconds`). A resumed run keeps the lines of a file
with its own fingerprint, so the final shard is the same bytes as an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from oln.io import read_jsonl, write_text

NEUTRAL_OPTIONS = ("num_workers", "device", "max_skipped_fraction")  # options that do not change the records


def settings_fingerprint(model_path: str | os.PathLike, images_json: str | os.PathLike,
                         image_root: str | os.PathLike, source: str, shard: int, num_shards: int,
                         options: Any, gt_category_ids: list[int] | None) -> str:
    """Hash of everything a shard's content depends on (model and images files by size and mtime).

    Args:
        model_path, images_json, image_root, source, shard, num_shards, gt_category_ids: see
            `oln.pseudo.extract.extract_shard`.
        options: its ExtractOptions (the `NEUTRAL_OPTIONS` do not count).
    Returns:
        a SHA-256 hex digest.
    """
    parts = {
        "model": _file_stamp(model_path), "images": _file_stamp(images_json),
        "image_root": str(Path(image_root).resolve()), "source": source, "shard": shard,
        "num_shards": num_shards, "options": dataclasses.asdict(options),
        "gt_category_ids": None if gt_category_ids is None else sorted(gt_category_ids),
    }
    for key in NEUTRAL_OPTIONS:
        parts["options"].pop(key, None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: str | os.PathLike) -> list:
    """[resolved path, size, mtime in ns] of a file; [path] if it does not exist."""
    path = Path(path)
    if not path.exists():
        return [str(path)]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def resume_progress(partial: Path, settings: str, images: list[dict]) -> dict[int, dict]:
    """Finished images of a killed run with the same settings, by id; rewrites `partial` to hold just them.

    Progress of other settings, a line torn by the kill and images that were skipped as
    unreadable (so a fixed image root or file is read again) are dropped.

    Args:
        partial: the progress file (need not exist).
        settings: this run's `settings_fingerprint`.
        images: the shard's images.
    Returns:
        {image id: its progress line}.
    """
    header = {"settings": settings}
    done: dict[int, dict] = {}
    lines = read_jsonl(partial) if partial.exists() else []
    if lines and lines[0] == header:
        wanted = {im["id"] for im in images}
        for line in lines[1:]:
            if line["image_id"] in wanted and not line["skipped"]:
                done[line["image_id"]] = line
    write_text(partial, "".join(json.dumps(line) + "\n" for line in [header, *done.values()]))
    return done
