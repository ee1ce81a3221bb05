"""Pseudo-GT extraction: affinity inference on a shard of images, grouping into ranked masks.

One call handles one shard of one image source. Images (sorted by id) go to
shard `i % num_shards`; affinity maps are predicted in batches on the device and
grouped into proposals by a pool of CPU workers while the next batch runs.
Each finished image is appended to `out_path + ".partial.jsonl"`, so a killed
run resumes where it stopped and the final shard file is the same bytes as an
uninterrupted run's. Progress (count, rate, ETA) is logged through `oln.progress`.
Unreadable images are skipped with a warning; when more than
`ExtractOptions.max_skipped_fraction` of a shard's images are (a wrong image root),
the stage fails and writes no shard.

The worker job and pool are in `oln.pseudo.workers`, the progress file in
`oln.pseudo.partial_file`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from oln.affinity.model import load_pa_model
from oln.affinity.predict import predict_affinity
from oln.data.coco import UnreadableImage, check_skipped, load_image
from oln.data.filtering import filter_training_images
from oln.devices import resolve_device
from oln.grouping import GroupingOptions
from oln.io import append_jsonl, read_json, write_json
from oln.progress import Progress
from oln.pseudo.partial_file import resume_progress, settings_fingerprint
from oln.pseudo.workers import group_image, gt_rles, start_pool

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
            grouping, with a logged message (masks are resized back to the original size);
            bounds grouping memory (~1 GB for the full setting at 1333 x 1000); None = full size.
        max_skipped_fraction: fail (no shard written) when more than this share of the shard's
            images cannot be read, e.g. a wrong image root; fewer are skipped with a counted warning.
        grouping: GroupingOptions (defaults = GGN's extraction setting).
    """

    top_k: int = 20
    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    max_side: int | None = 1333
    max_skipped_fraction: float = 0.5
    grouping: GroupingOptions = field(default_factory=GroupingOptions)


def shard_images(images: list[dict], shard: int, num_shards: int) -> list[dict]:
    """Images of one shard: sorted by id, image i goes to shard i % num_shards."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} out of range for num_shards={num_shards}")
    return sorted(images, key=lambda im: im["id"])[shard::num_shards]


def _to_tensor(image: np.ndarray, max_side: int | None) -> torch.Tensor:
    """uint8 (H, W, 3) image -> float (3, h, w) in [0, 1], downscaled to a longer side of `max_side`."""
    height, width = image.shape[:2]
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)


@dataclass
class _Shard:
    """The images of one shard and what their records need.

    Attributes:
        model_path: affinity model file.
        image_root: folder the images' `file_name`s are relative to.
        source: name stored in every record.
        images: the shard's images, sorted by id.
        annotations: annotations by image id (for `gt_iou`).
        category_ids: categories whose annotations count for `gt_iou`; None = all.
        partial: progress file: a settings line, then one line per finished image.
    """

    model_path: Path
    image_root: Path
    source: str
    images: list[dict]
    annotations: dict[int, list[dict]]
    category_ids: set[int] | None
    partial: Path


@dataclass
class _Pending:
    """An image whose grouping job (None: unreadable image) is not collected yet."""

    info: dict
    job: Any
    started: float
    extra_seconds: float


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
        out_path: shard JSON {"records", "images", "image_root", "source", "stats", "settings"};
            progress is kept in `out_path + ".partial.jsonl"` until the shard is complete. An
            existing file is returned as it is only when its `settings` fingerprint (options,
            files, model file by size and mtime) is this call's; otherwise it is extracted again.
        gt_category_ids: categories whose annotations count for `gt_iou` (seen classes); None = all.
        filter_empty_gt: only images with an annotation of `gt_category_ids` (GGN trains its
            detector on those images only, so pseudo masks elsewhere would never be used).
    Returns:
        stats: num_images, num_skipped, skipped_files, num_proposals, seconds (sum of per-image times).
    Raises:
        ValueError: more than `options.max_skipped_fraction` of the shard's images cannot be read
            (names the image root and the first unreadable file; no shard is written).
    """
    options = options or ExtractOptions()
    out_path = Path(out_path)
    settings = settings_fingerprint(model_path, images_json, image_root, source, shard, num_shards, options,
                                    gt_category_ids)
    if out_path.exists():
        finished = read_json(out_path)
        if finished.get("settings") == settings:
            return finished["stats"]
        log.info("%s was written with other settings or another model file: extracting it again", out_path)
    job = _load_shard(model_path, images_json, image_root, source, shard, num_shards, gt_category_ids,
                      filter_empty_gt, Path(str(out_path) + ".partial.jsonl"))
    done = resume_progress(job.partial, settings, job.images)
    progress = Progress(f"extract {source} shard {shard}/{num_shards}", total=len(job.images), start=len(done),
                        enabled=int(os.environ.get("RANK", "0")) == 0, unit="img")
    todo = [im for im in job.images if im["id"] not in done]
    if todo:
        _run(job, todo, options, done, progress)
    progress.close()
    stats, seconds = _write_shard(job, done, options.max_skipped_fraction, out_path, settings)
    log.info("shard %d/%d of %s: %d images, %d proposals, %.1f s of grouping+inference", shard, num_shards,
             source, stats["num_images"], stats["num_proposals"], seconds)
    return {**stats, "seconds": round(seconds, 3)}


def _load_shard(model_path: str | os.PathLike, images_json: str | os.PathLike, image_root: str | os.PathLike,
                source: str, shard: int, num_shards: int, gt_category_ids: list[int] | None,
                filter_empty_gt: bool, partial: Path) -> _Shard:
    """Read `images_json` and keep the images of one shard with their annotations (see `extract_shard`)."""
    data = read_json(images_json)
    images = data.get("images", [])
    if filter_empty_gt:
        images = filter_training_images(images, data.get("annotations") or [], gt_category_ids, str(images_json))
    by_image: dict[int, list[dict]] = {}
    for ann in data.get("annotations") or []:
        by_image.setdefault(ann["image_id"], []).append(ann)
    return _Shard(model_path=Path(model_path), image_root=Path(image_root), source=source,
                  images=shard_images(images, shard, num_shards), annotations=by_image,
                  category_ids=None if gt_category_ids is None else set(gt_category_ids), partial=partial)


def _write_shard(job: _Shard, done: dict[int, dict], max_skipped_fraction: float,
                 out_path: Path, settings: str) -> tuple[dict, float]:
    """Write the shard file from the finished images (in id order) and remove the progress file.

    The file keeps its `settings` fingerprint, so that a finished shard is only reused for the
    same settings and model file.

    Returns:
        (stats as written, summed per-image seconds).
    Raises:
        ValueError: too many unreadable images (`check_skipped`); nothing is written.
    """
    records, skipped, seconds = [], [], 0.0
    for info in job.images:
        line = done[info["id"]]
        seconds += line["seconds"]
        if line["skipped"]:
            skipped.append(info["file_name"])
        records.extend(line["records"])
    check_skipped(len(skipped), len(job.images), max_skipped_fraction, job.image_root,
                  [str(job.image_root / name) for name in skipped], option="extract.max_skipped_fraction")
    stats = {
        "num_images": len(job.images),
        "num_skipped": len(skipped),
        "skipped_files": skipped,
        "num_proposals": len(records),
    }
    kept_images = [info for info in job.images if not done[info["id"]]["skipped"]]
    write_json(
        out_path,
        {
            "source": job.source,
            "image_root": str(job.image_root.resolve()),
            "images": kept_images,
            "records": records,
            "stats": stats,
            "settings": settings,
        },
    )
    job.partial.unlink(missing_ok=True)
    return stats, seconds


def _run(job: _Shard, todo: list[dict], options: ExtractOptions, done: dict[int, dict],
         progress: Progress) -> None:
    """Predict affinities batch by batch and group them in a worker pool, appending finished images.

    Grouping overlaps with the next batch's inference: up to `batch_size` images wait for
    their worker while it runs. Finished images are collected (and `progress` updated) here,
    in the main process, never in a worker.
    """
    pool = start_pool(options.num_workers)  # before CUDA is initialised (see `start_pool`)
    grouping = dataclasses.asdict(options.grouping)
    pending: deque[_Pending] = deque()
    try:
        device = resolve_device(options.device)
        model, meta = load_pa_model(job.model_path, device)
        for start in range(0, len(todo), options.batch_size):
            started = time.perf_counter()
            readable, unreadable = _read_batch(todo[start : start + options.batch_size], job.image_root,
                                               options.max_side)
            pending.extend(_Pending(info, None, time.perf_counter(), 0.0) for info in unreadable)
            tensors = [tensor for _, tensor, _ in readable]
            affinities = predict_affinity(model, tensors, meta, device, batch_size=len(tensors)) if tensors else []
            per_image = (time.perf_counter() - started) / max(len(tensors), 1)
            for (info, _, hw), affinity in zip(readable, affinities):
                reduced = affinity.min(dim=0).values.numpy() if affinity.ndim == 3 else affinity.numpy()
                gt = gt_rles(job.annotations.get(info["id"], []), hw[0], hw[1], job.category_ids)
                result = pool.apply_async(group_image, (reduced, hw, grouping, options.top_k, info["id"],
                                                        job.source, gt))
                pending.append(_Pending(info, result, time.perf_counter(), per_image))
            while len(pending) > options.batch_size * (1 if options.num_workers else 0):
                _finish(pending.popleft(), job.partial, done, progress)
        while pending:
            _finish(pending.popleft(), job.partial, done, progress)
    finally:
        pool.close()
        pool.join()


def _read_batch(batch: list[dict], image_root: Path,
                max_side: int | None) -> tuple[list[tuple[dict, torch.Tensor, tuple[int, int]]], list[dict]]:
    """Decode a batch of images.

    Returns:
        ([(info, float tensor (3, h, w) at most `max_side`, original (H, W))], unreadable infos).
    """
    readable, unreadable = [], []
    for info in batch:
        try:
            image = load_image(image_root / info["file_name"], (info.get("height"), info.get("width")))
        except UnreadableImage as err:
            log.warning("skipping unreadable image: %s", err)
            unreadable.append(info)
            continue
        if max_side is not None and max(image.shape[:2]) > max_side:
            log.info("image %s: %dx%d is downsized to a longer side of max_side=%d for inference and "
                     "grouping; its masks are upsampled back", info["id"], *image.shape[:2], max_side)
        readable.append((info, _to_tensor(image, max_side), image.shape[:2]))
    return readable, unreadable


def _finish(entry: _Pending, partial: Path, done: dict[int, dict], progress: Progress) -> None:
    """Collect one image's records, append them to the progress file and count the image done."""
    records = entry.job.get() if entry.job is not None else []
    line = {
        "image_id": entry.info["id"],
        "skipped": entry.job is None,
        "records": records,
        "seconds": entry.extra_seconds + (time.perf_counter() - entry.started),
    }
    append_jsonl(partial, line)
    done[entry.info["id"]] = line
    progress.update(len(done))
