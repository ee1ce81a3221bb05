"""GGN's PA proposals (`--eval-proposals`): the grouping's own masks as a detector's COCO results."""

from __future__ import annotations

import copy
import os
from pathlib import Path

from oln.io import read_json, write_json
from oln.pseudo.extract import ExtractOptions, extract_shard


def extract_proposals(
    model_path: str | os.PathLike,
    images_json: str | os.PathLike,
    image_root: str | os.PathLike,
    options: ExtractOptions,
    top_k: int,
    out_json: str | os.PathLike,
    gt_category_ids: list[int] | None = None,
    source: str = "val",
    shard: int = 0,
    num_shards: int = 1,
) -> dict:
    """Up to `top_k` grouping masks per image (no grouping cap), written as a COCO results json.

    The proposal records are kept next to `out_json` as `<stem>.records.json` (extraction
    resumes from them, see `extract_shard`).

    Returns:
        The extraction statistics and `detections` (records written).
    """
    options = copy.deepcopy(options)
    options.top_k = top_k
    options.grouping.max_proposals = None
    out_json = Path(out_json)
    records_path = out_json.with_name(out_json.stem + ".records.json")
    stats = extract_shard(model_path, images_json, image_root, source, shard, num_shards, options, records_path,
                          gt_category_ids=gt_category_ids)
    return {**stats, "detections": write_proposals_as_results(records_path, out_json)}


def write_proposals_as_results(records_path: str | os.PathLike, out_json: str | os.PathLike) -> int:
    """Proposal records -> COCO results json (category 1, score, bbox, RLE segmentation).

    Returns:
        The number of results written.
    """
    records = read_json(records_path)["records"]
    results = [{"image_id": r["image_id"], "category_id": 1, "bbox": r["bbox"], "score": r["score"],
                "segmentation": r["segmentation"]} for r in records]
    write_json(out_json, results)
    return len(results)
