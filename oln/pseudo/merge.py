"""Merge annotated seen-class GT with filtered pseudo masks into one COCO training json.

Pseudo masks (records of `extract_shard` files) are kept when they do not
overlap annotated GT (`gt_iou < max_gt_iou`), pass the optional score
threshold and are among the `top_k` best left in their image. They get new
annotation ids, `pseudo: 1`, and the id of an added category named "pseudo".
Shard images of the annotated source (`train`) are the annotated json's images, matched
by `file_name` (so a results folder that was moved or copied still merges onto its own
images; a shard image missing from the json is an error). Images of other sources are
added with new ids and a `file_name` that resolves against the output's `image_root`
(relative when possible, absolute otherwise).
When more than `MergeOptions.max_skipped_fraction` of the annotated images (or of a
shard's images) are missing under their root, the merge fails and writes nothing.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from oln.data.coco import UnreadableImage, annotation_to_rle, check_skipped, load_image
from oln.io import atomic_path, read_json, write_json
from oln.rle import decode_rle

log = logging.getLogger(__name__)
PSEUDO_CATEGORY_NAME = "pseudo"
ANNOTATED_SOURCE = "train"  # the source whose shards hold the annotated json's own images


@dataclass
class MergeOptions:
    """Options of `merge_pseudo`.

    Attributes:
        max_gt_iou: keep pseudo masks whose best IoU with annotated GT is below this (GGN: 0.5).
        min_score: keep pseudo masks with score >= this; None = no threshold.
        top_k: pseudo masks kept per image after the filters above (best ranks first).
        min_area: drop pseudo masks with fewer pixels.
        gallery_images: images drawn in the gallery PNG.
        recall_iou: IoU at which an unseen-category object counts as recalled (stats).
        max_skipped_fraction: fail (nothing written) when more than this share of the images of
            the annotated json, or of a shard, are missing under their image root (e.g. a wrong
            `--image-root`); fewer are kept with a counted warning.
    """

    max_gt_iou: float = 0.5
    min_score: float | None = None
    top_k: int = 3
    min_area: int = 0
    gallery_images: int = 12
    recall_iou: float = 0.5
    max_skipped_fraction: float = 0.5


def _resolved(root: str | os.PathLike, file_name: str) -> str:
    return os.path.normpath(os.path.join(os.path.abspath(root), file_name))


def _relative_file_name(path: str, image_root: str | os.PathLike) -> str:
    """`path` relative to `image_root` (may use ..), or absolute when on another drive."""
    try:
        return os.path.relpath(path, os.path.abspath(image_root))
    except ValueError:
        return path


def merge_pseudo(
    gt_json: str | os.PathLike,
    shard_paths: list[str],
    seen_category_ids: list[int],
    options: MergeOptions | None,
    out_json: str | os.PathLike,
    stats_json: str | os.PathLike,
    gallery_png: str | os.PathLike,
    image_root: str | os.PathLike,
    full_gt_json: str | os.PathLike | None = None,
    ranker_model: str | os.PathLike | None = None,
    device: str = "auto",
) -> dict:
    """Write the merged training json, its stats json and a gallery of kept pseudo masks.

    Args:
        gt_json: COCO json of the annotated source (its seen-category annotations are kept).
        shard_paths: shard files of `extract_shard` (any sources).
        seen_category_ids: categories whose GT annotations are kept.
        options: MergeOptions.
        out_json, stats_json, gallery_png: outputs.
        image_root: root the gt_json's file names are relative to; also the root of the output json.
        full_gt_json: optional json annotating ALL categories of (some of) the images, to measure the
            recall of unseen-category objects by the kept pseudo masks.
        ranker_model: model.pt of a detector trained on seen GT; when given, every candidate's
            `score` becomes GGN's ranker score before the filters (`oln.pseudo.ranker`).
        device: where the ranker runs ("auto" | "cpu" | "cuda[:N]").
    Returns:
        the stats dict.
    Raises:
        ValueError: more than `options.max_skipped_fraction` of the images of `gt_json` (or of a
            shard) are missing under their root; names the root and the first missing file.
    """
    options = options or MergeOptions()
    gt = read_json(gt_json)
    seen = set(seen_category_ids)
    check_image_files(gt["images"], image_root, options.max_skipped_fraction)
    images = [dict(im) for im in gt["images"]]
    path_to_id = {_resolved(image_root, im["file_name"]): im["id"] for im in images}
    categories = [dict(c) for c in gt.get("categories", [])]
    pseudo_id = max([c["id"] for c in categories], default=0) + 1
    categories.append({"id": pseudo_id, "name": PSEUDO_CATEGORY_NAME, "supercategory": PSEUDO_CATEGORY_NAME})
    records_by_image = add_shard_images(shard_paths, images, path_to_id, image_root, options.max_skipped_fraction)
    if ranker_model is not None:
        rank_with_detector(records_by_image, images, image_root, ranker_model, device)
    kept_by_image, dropped = select_pseudo_masks(records_by_image, options)
    first_id = max([a["id"] for a in gt.get("annotations", [])], default=0) + 1
    annotations = [dict(a) for a in gt.get("annotations", []) if a["category_id"] in seen]
    annotations += pseudo_annotations(kept_by_image, pseudo_id, first_id)
    merged = {"images": images, "annotations": annotations, "categories": categories}
    for key in ("info", "licenses"):
        if key in gt:
            merged[key] = gt[key]
    write_json(out_json, merged)

    stats = merge_stats(merged, records_by_image, kept_by_image, dropped, pseudo_id)
    stats["ranker"] = None if ranker_model is None else str(ranker_model)
    if full_gt_json is not None:
        stats["unseen_recall"] = unseen_recall(
            read_json(full_gt_json), image_root, path_to_id, kept_by_image, seen, options.recall_iou
        )
    write_json(stats_json, stats, indent=2)
    draw_gallery(merged, kept_by_image, image_root, gallery_png, options.gallery_images)
    return stats


def rank_with_detector(records_by_image: dict[int, list[dict]], images: list[dict], image_root: str | os.PathLike,
                       ranker_model: str | os.PathLike, device: str) -> None:
    """Re-score the candidates with the detector in `ranker_model` (GGN's OLN ranker), in place."""
    from oln.detector.predict import load_detector
    from oln.devices import resolve_device
    from oln.pseudo.ranker import check_ranker, rerank_records

    model = load_detector(ranker_model, resolve_device(device))
    check_ranker(model, ranker_model)
    log.info("re-ranking the pseudo-mask candidates of %d images with %s", len(records_by_image), ranker_model)
    skipped = rerank_records(records_by_image, {im["id"]: im["file_name"] for im in images}, image_root, model)
    if skipped:
        log.warning("ranker: %d of %d images unreadable, their candidates dropped", skipped, len(records_by_image))


def check_image_files(images: list[dict], image_root: str | os.PathLike, max_fraction: float) -> None:
    """Fail (see `oln.data.coco.check_skipped`) when most `images` are missing under `image_root`.

    Only existence is checked (cheap for COCO's 118k files); the trainer skips unreadable
    images. A wrong image root otherwise gives a json whose images all fail to load.
    """
    missing = [path for path in (_resolved(image_root, im["file_name"]) for im in images) if not os.path.isfile(path)]
    check_skipped(len(missing), len(images), max_fraction, image_root, missing, option="merge.max_skipped_fraction")


def add_shard_images(shard_paths: list[str], images: list[dict], path_to_id: dict[str, int],
                     image_root: str | os.PathLike, max_fraction: float) -> dict[int, list[dict]]:
    """Map every shard image to an output image, adding images of other sources, and group records.

    Args:
        shard_paths: shard files of `extract_shard` (read in sorted order).
        images: output images, the annotated json's first; a shard image of another source whose
            file is not among them is appended with the next id, its `source` and a `file_name`
            that resolves against `image_root`.
        path_to_id: resolved file path -> output image id; updated with the added images.
        image_root: root of the output json.
        max_fraction: fail when more than this share of a shard's images are missing.
    Returns:
        proposal records by output image id, in shard order.
    """
    next_image_id = max([im["id"] for im in images], default=0) + 1
    annotated_ids = {os.path.normpath(im["file_name"]): im["id"] for im in images}
    records_by_image: dict[int, list[dict]] = {}
    for shard_path in sorted(shard_paths):
        shard = read_json(shard_path)
        if shard.get("source") == ANNOTATED_SOURCE:
            id_map = annotated_image_ids(shard, shard_path, annotated_ids, image_root)
            for record in shard["records"]:
                records_by_image.setdefault(id_map[record["image_id"]], []).append(record)
            continue
        check_image_files(shard.get("images", []), shard["image_root"], max_fraction)
        id_map = {}
        for info in shard.get("images", []):
            path = _resolved(shard["image_root"], info["file_name"])
            if path not in path_to_id:
                images.append(dict(info, id=next_image_id, file_name=_relative_file_name(path, image_root),
                                   source=shard["source"]))
                path_to_id[path] = next_image_id
                next_image_id += 1
            id_map[info["id"]] = path_to_id[path]
        for record in shard["records"]:
            records_by_image.setdefault(id_map[record["image_id"]], []).append(record)
    return records_by_image


def annotated_image_ids(shard: dict, shard_path: str, annotated_ids: dict[str, int],
                        image_root: str | os.PathLike) -> dict[int, int]:
    """Shard image id -> annotated json image id, by `file_name`, for a shard of the annotated source.

    Raises:
        ValueError: a shard image is not in the annotated json (the shard is of another dataset).
    """
    if _resolved(shard["image_root"], ".") != _resolved(image_root, "."):
        log.warning("%s was extracted from the images under %s; merged onto those of the annotated json under %s "
                    "(matched by file name)", shard_path, shard["image_root"], image_root)
    id_map = {}
    for info in shard.get("images", []):
        image_id = annotated_ids.get(os.path.normpath(info["file_name"]))
        if image_id is None:
            raise ValueError(f"{shard_path}: image {info['file_name']!r} of source '{ANNOTATED_SOURCE}' is not in "
                             f"the annotated json (a shard of another dataset? re-run extract_pseudo)")
        id_map[info["id"]] = image_id
    return id_map


def select_pseudo_masks(records_by_image: dict[int, list[dict]],
                        options: MergeOptions) -> tuple[dict[int, list[dict]], Counter]:
    """Filter each image's proposals (GT overlap, score, area), best first, and keep its top k.

    Returns:
        (kept records by image id, in image id order; counts of dropped records by reason).
    """
    dropped: Counter = Counter()
    kept_by_image: dict[int, list[dict]] = {}
    for image_id in sorted(records_by_image):
        candidates = []
        for record in sorted(records_by_image[image_id], key=lambda r: (-r["score"], r["rank"])):
            if record["gt_iou"] >= options.max_gt_iou:
                dropped["overlaps_gt"] += 1
            elif options.min_score is not None and record["score"] < options.min_score:
                dropped["low_score"] += 1
            elif record["area"] < max(options.min_area, 1):
                dropped["too_small"] += 1
            else:
                candidates.append(record)
        dropped["over_top_k"] += max(0, len(candidates) - options.top_k)
        kept_by_image[image_id] = candidates[: options.top_k]
    return kept_by_image, dropped


def pseudo_annotations(kept_by_image: dict[int, list[dict]], pseudo_id: int, first_id: int) -> list[dict]:
    """COCO annotations (`pseudo: 1`, category `pseudo_id`) of the kept records, ids from `first_id`."""
    annotations = []
    for image_id, records in kept_by_image.items():
        for record in records:
            annotations.append(
                {
                    "id": first_id + len(annotations),
                    "image_id": image_id,
                    "category_id": pseudo_id,
                    "segmentation": record["segmentation"],
                    "area": record["area"],
                    "bbox": record["bbox"],
                    "iscrowd": 0,
                    "pseudo": 1,
                    "score": record["score"],
                    "source": record["source"],
                }
            )
    return annotations


def merge_stats(merged: dict, records_by_image: dict[int, list[dict]], kept_by_image: dict[int, list[dict]],
                dropped: Counter, pseudo_id: int) -> dict:
    """Counts of the merged json: images, GT and pseudo annotations, drops by reason, score histogram."""
    kept_scores = [r["score"] for records in kept_by_image.values() for r in records]
    num_candidates = sum(len(v) for v in records_by_image.values())
    if not kept_scores:
        log.warning("no pseudo mask kept (%d candidates in %d images)", num_candidates, len(records_by_image))
    counts, edges = np.histogram(kept_scores, bins=10) if kept_scores else (np.zeros(0), np.zeros(0))
    return {
        "num_images": len(merged["images"]),
        "num_gt_annotations": len(merged["annotations"]) - len(kept_scores),
        "num_pseudo_candidates": num_candidates,
        "num_pseudo_kept": len(kept_scores),
        "dropped": dict(sorted(dropped.items())),
        "kept_per_image": {
            str(k): v for k, v in sorted(Counter(len(v) for v in kept_by_image.values()).items())
        },
        "score_histogram": {"edges": edges.tolist(), "counts": counts.astype(int).tolist()},
        "pseudo_category_id": pseudo_id,
    }


def unseen_recall(
    full_gt: dict,
    image_root,
    path_to_id: dict[str, int],
    kept_by_image: dict[int, list[dict]],
    seen: set[int],
    iou_threshold: float,
) -> dict:
    """Fraction of unseen-category (non-crowd) objects matched by a kept pseudo mask at IoU >= threshold.

    Only images that went through extraction (have an entry in `kept_by_image`) count.
    """
    infos = {im["id"]: im for im in full_gt["images"]}
    objects = recalled = 0
    for ann in full_gt.get("annotations", []):
        if ann["category_id"] in seen or ann.get("iscrowd", 0):
            continue
        info = infos[ann["image_id"]]
        image_id = path_to_id.get(_resolved(image_root, info["file_name"]))
        if image_id not in kept_by_image:
            continue
        objects += 1
        pseudo = [r["segmentation"] for r in kept_by_image[image_id]]
        if pseudo:
            gt_rle = annotation_to_rle(ann, info["height"], info["width"])
            pseudo_rles = [{"size": p["size"], "counts": p["counts"].encode("ascii")} for p in pseudo]
            if mask_utils.iou(pseudo_rles, [gt_rle], [0]).max() >= iou_threshold:
                recalled += 1
    return {
        "num_objects": objects,
        "num_recalled": recalled,
        "iou": iou_threshold,
        "recall": recalled / objects if objects else 0.0,
    }


def draw_gallery(
    merged: dict,
    kept_by_image: dict[int, list[dict]],
    image_root,
    out_png,
    max_images: int = 12,
    tile_width: int = 256,
) -> None:
    """Grid (4 columns) of images with their kept pseudo masks overlaid in colour."""
    infos = {im["id"]: im for im in merged["images"]}
    chosen = [i for i in sorted(kept_by_image) if kept_by_image[i]][:max_images]
    tiles = []
    rng = np.random.default_rng(0)
    for image_id in chosen:
        try:
            image = load_image(Path(image_root) / infos[image_id]["file_name"]).astype(np.float32)
        except UnreadableImage as err:
            log.warning("gallery: skipping unreadable image: %s", err)
            continue
        for record in kept_by_image[image_id]:
            mask = decode_rle(record["segmentation"])
            if mask.shape != image.shape[:2]:
                continue
            color = rng.uniform(60, 255, 3).astype(np.float32)
            image[mask] = 0.5 * image[mask] + 0.5 * color
        scale = tile_width / image.shape[1]
        tile = cv2.resize(image.astype(np.uint8), (tile_width, max(1, round(image.shape[0] * scale))))
        tiles.append(tile)
    if not tiles:
        grid = np.full((64, tile_width, 3), 255, np.uint8)
    else:
        height = max(t.shape[0] for t in tiles)
        tiles = [np.pad(t, ((0, height - t.shape[0]), (0, 0), (0, 0)), constant_values=255) for t in tiles]
        columns = 4
        while len(tiles) % columns:
            tiles.append(np.full_like(tiles[0], 255))
        rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
        grid = np.concatenate(rows, axis=0)
    with atomic_path(out_png) as tmp:
        cv2.imwrite(str(tmp), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
