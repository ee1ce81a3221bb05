"""Pseudo-GT extraction: affinity inference on a shard of images, grouping into ranked masks.

One call handles one shard of one image source. Images (sorted by id) go to
shard `i % num_shards`; affinity maps are predicted in batches on the device and
grouped into proposals by a pool of CPU workers while the next batch runs.
Each finished image is appended to `out_path + ".partial.jsonl"`, so a killed
run resumes where it stopped and the final shard file is the same bytes as an
uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from oln.affinity.model import load_pa_model
from oln.affinity.predict import predict_affinity
from oln.data.coco import UnreadableImage, annotation_to_rle, load_image
from oln.data.filtering import filter_training_images
from oln.engine import resolve_device
from oln.grouping import GroupingOptions, affinity_to_proposals
from oln.io import append_jsonl, read_json, read_jsonl, write_json, write_text

log = logging.getLogger(__name__)


@dataclass
class ExtractOptions:
    """Options of `extract_shard`.

    Attributes:
        top_k: proposals stored per image (GGN: 20).
        batch_size: images per affinity forward pass.
        num_workers: CPU processes grouping affinity maps (0 = in the main process).
        device: auto | cpu | cuda | cuda:N for affinity inference.
        max_side: downscale images whose longer side exceeds this before inference and
            grouping (masks are resized back to the original size); None = full size.
        grouping: GroupingOptions (defaults = GGN's extraction setting).
    """

    top_k: int = 20
    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    max_side: int | None = None
    grouping: GroupingOptions = field(default_factory=GroupingOptions)


def shard_images(images: list[dict], shard: int, num_shards: int) -> list[dict]:
    """Images of one shard: sorted by id, image i goes to shard i % num_shards."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for num_shards={num_shards}")
    return sorted(images, key=lambda im: im["id"])[shard::num_shards]


def proposals_to_records(
    masks: np.ndarray, scores: np.ndarray, image_id: int, source: str, gt_rles: list[dict]
) -> list[dict]:
    """Encode ranked masks as proposal records (RLE, bbox xywh, area, score, rank, gt_iou, source)."""
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    if gt_rles:
        gt_iou = mask_utils.iou(rles, gt_rles, [0] * len(gt_rles)).max(axis=1)
    else:
        gt_iou = np.zeros(len(rles))
    records = []
    for rank, rle in enumerate(rles):
        records.append(
            {
                "image_id": int(image_id),
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "bbox": [float(v) for v in boxes[rank]],
                "area": int(areas[rank]),
                "score": float(scores[rank]),
                "rank": rank,
                "gt_iou": float(gt_iou[rank]),
                "source": source,
            }
        )
    return records


def group_image(
    affinity: np.ndarray,
    orig_hw: tuple[int, int],
    grouping: dict,
    top_k: int,
    image_id: int,
    source: str,
    gt_rles: list[dict],
) -> list[dict]:
    """Worker job: (H, W) affinity -> top-k proposal records at the original resolution."""
    options = GroupingOptions(**grouping)
    options.max_proposals = top_k
    masks, scores = affinity_to_proposals(affinity, options)
    if len(masks) and masks.shape[1:] != tuple(orig_hw):
        height, width = orig_hw
        masks = np.stack(
            [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) for m in masks]
        ).astype(bool)
    return proposals_to_records(masks, scores, image_id, source, gt_rles)


def _gt_rles(annotations: list[dict], info: dict, category_ids: set[int] | None) -> list[dict]:
    rles = []
    for ann in annotations:
        if ann.get("iscrowd", 0) or (category_ids is not None and ann["category_id"] not in category_ids):
            continue
        rles.append(annotation_to_rle(ann, info["height"], info["width"]))
    return rles


def _to_tensor(image: np.ndarray, max_side: int | None) -> torch.Tensor:
    height, width = image.shape[:2]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


class _InlinePool:
    """Stand-in for a process pool when num_workers == 0."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def apply_async(self, fn, args):
        return self._Done(fn(*args))

    def close(self):
        pass

    def join(self):
        pass


def extract_shard(
    model_path: str | os.PathLike,
    images_json: str | os.PathLike,
    image_root: str | os.PathLike,
    source: str,
    shard: int,
    num_shards: int,
    options: ExtractOptions | None,
    out_path: str | os.PathLike,
    gt_category_ids: list[int] | None = None,
    filter_empty_gt: bool = False,
) -> dict:
    """Extract ranked pseudo masks for one shard of an image source.

    Args:
        model_path: affinity model written by `oln.affinity.model.save_pa_model`.
        images_json: COCO json; without annotations the source counts as unlabeled (gt_iou = 0).
        image_root: folder the json's `file_name`s are relative to.
        source: name stored in every record (e.g. "train", "unlabeled").
        shard, num_shards: which slice of the images (sorted by id, i % num_shards).
        options: ExtractOptions.
        out_path: shard JSON {"records", "images", "image_root", "source", "stats"}; progress is
            kept in `out_path + ".partial.jsonl"` until the shard is complete.
        gt_category_ids: categories whose annotations count for `gt_iou` (seen classes); None = all.
        filter_empty_gt: only images with an annotation of `gt_category_ids` (GGN trains its
            detector on those images only, so pseudo masks elsewhere would never be used).
    Returns:
        stats: num_images, num_skipped, skipped_files, num_proposals, seconds (sum of per-image times).
    """
    options = options or ExtractOptions()
    out_path = Path(out_path)
    if out_path.exists():
        return read_json(out_path)["stats"]
    data = read_json(images_json)
    images = data.get("images", [])
    if filter_empty_gt:
        images = filter_training_images(images, data.get("annotations") or [], gt_category_ids, str(images_json))
    images = shard_images(images, shard, num_shards)
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations") or []:
        by_image.setdefault(ann["image_id"], []).append(ann)
    category_ids = None if gt_category_ids is None else set(gt_category_ids)

    partial = Path(str(out_path) + ".partial.jsonl")
    settings = {"settings": _settings_fingerprint(model_path, images_json, source, shard, num_shards, options,
                                                  gt_category_ids)}
    done: dict[int, dict] = {}
    lines = read_jsonl(partial) if partial.exists() else []
    if lines and lines[0] == settings:  # progress of a run with other settings is discarded
        wanted = {im["id"] for im in images}
        for line in lines[1:]:
            if line["image_id"] in wanted:
                done[line["image_id"]] = line
    # rewrite: settings header + finished images (drops a torn tail or stale progress)
    write_text(partial, "".join(json.dumps(line) + "\n" for line in [settings, *done.values()]))
    todo = [im for im in images if im["id"] not in done]

    if todo:
        _run(model_path, image_root, source, todo, by_image, category_ids, options, partial, done)

    records, skipped, seconds = [], [], 0.0
    for info in images:
        line = done[info["id"]]
        seconds += line["seconds"]
        if line["skipped"]:
            skipped.append(info["file_name"])
        records.extend(line["records"])
    stats = {
        "num_images": len(images),
        "num_skipped": len(skipped),
        "skipped_files": skipped,
        "num_proposals": len(records),
    }
    kept_images = [info for info in images if not done[info["id"]]["skipped"]]
    write_json(
        out_path,
        {
            "source": source,
            "image_root": str(Path(image_root).resolve()),
            "images": kept_images,
            "records": records,
            "stats": stats,
        },
    )
    partial.unlink(missing_ok=True)
    log.info("shard %d/%d of %s: %d images, %d proposals, %.1f s of grouping+inference", shard, num_shards,
             source, len(images), len(records), seconds)
    return {**stats, "seconds": round(seconds, 3)}


def _settings_fingerprint(model_path, images_json, source, shard, num_shards, options, gt_category_ids) -> str:
    """Hash of everything a shard's content depends on (model and images files by size and mtime)."""
    parts = {
        "model": _file_stamp(model_path), "images": _file_stamp(images_json), "source": source, "shard": shard,
        "num_shards": num_shards, "options": dataclasses.asdict(options),
        "gt_category_ids": None if gt_category_ids is None else sorted(gt_category_ids),
    }
    parts["options"].pop("num_workers", None)
    parts["options"].pop("device", None)
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _file_stamp(path: str | os.PathLike) -> list:
    path = Path(path)
    if not path.exists():
        return [str(path)]
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _run(model_path, image_root, source, todo, by_image, category_ids, options, partial, done) -> None:
    """Predict affinities batch by batch and group them in a worker pool, appending finished images."""
    if options.num_workers > 0:
        # fork (cheap: modules already imported) is safe only before CUDA is initialised: pool first
        fork_ok = "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized()
        pool = multiprocessing.get_context("fork" if fork_ok else "spawn").Pool(options.num_workers)
    else:
        pool = _InlinePool()
    grouping = dataclasses.asdict(options.grouping)
    pending: deque = deque()

    def finish(entry) -> None:
        info, job, started, extra_seconds = entry
        records = job.get() if job is not None else []
        line = {
            "image_id": info["id"],
            "skipped": job is None,
            "records": records,
            "seconds": extra_seconds + (time.perf_counter() - started),
        }
        append_jsonl(partial, line)
        done[info["id"]] = line

    try:
        device = resolve_device(options.device)
        model, meta = load_pa_model(model_path, device)
        for start in range(0, len(todo), options.batch_size):
            batch = todo[start : start + options.batch_size]
            started = time.perf_counter()
            tensors, infos, sizes = [], [], []
            for info in batch:
                try:
                    image = load_image(
                        Path(image_root) / info["file_name"], (info.get("height"), info.get("width"))
                    )
                except UnreadableImage as err:
                    log.warning("skipping unreadable image: %s", err)
                    pending.append((info, None, time.perf_counter(), 0.0))
                    continue
                tensors.append(_to_tensor(image, options.max_side))
                infos.append(info)
                sizes.append(image.shape[:2])
            affinities = (
                predict_affinity(model, tensors, meta, device, batch_size=len(tensors)) if tensors else []
            )
            per_image = (time.perf_counter() - started) / max(len(tensors), 1)
            for info, hw, affinity in zip(infos, sizes, affinities):
                reduced = affinity.min(dim=0).values.numpy() if affinity.ndim == 3 else affinity.numpy()
                gt = _gt_rles(by_image.get(info["id"], []), {"height": hw[0], "width": hw[1]}, category_ids)
                job = pool.apply_async(
                    group_image, (reduced, hw, grouping, options.top_k, info["id"], source, gt)
                )
                pending.append((info, job, time.perf_counter(), per_image))
            while len(pending) > options.batch_size * (1 if options.num_workers else 0):
                finish(pending.popleft())
        while pending:
            finish(pending.popleft())
    finally:
        pool.close()
        pool.join()
