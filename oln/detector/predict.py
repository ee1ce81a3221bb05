"""Batched inference of a trained detector over a COCO json's images -> COCO results json.

Each detection becomes `{"image_id", "category_id": 1, "bbox": [x, y, w, h],
"score"[, "segmentation": RLE]}` (masks pasted by torchvision, thresholded at
`DetectorOptions.mask_threshold`, RLE counts as str). Records are streamed to a
temporary file and renamed onto `out_json` at the end, so memory stays bounded
with 1000 detections per image. Unreadable images are skipped with a warning
and counted; more than `PredictOptions.max_skipped_fraction` of them (a wrong
image root) fail the stage (`oln.data.coco.check_skipped`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from torch import nn

from oln.data.coco import UnreadableImage, check_skipped, load_image
from oln.detector.model import DetectorOptions, build_detector
from oln.devices import resolve_device
from oln.io import atomic_path, read_json
from oln.progress import Progress
from oln.rle import encode_masks

log = logging.getLogger(__name__)


@dataclass
class PredictOptions:
    """Inference settings.

    Fields:
        batch_size: images per forward pass.
        num_workers: image-decoding worker processes.
        device: "auto" | "cpu" | "cuda" | "cuda:N".
        amp: bf16 autocast on CUDA (score/box layers stay float32).
        max_detections: detections per image (0 = the value stored with the model).
        masks: write `segmentation` when the model has a mask head.
        max_skipped_fraction: fail (nothing written) when more than this share of the images
            cannot be read, e.g. a wrong image root; fewer are skipped with a counted warning.
    """

    batch_size: int = 4
    num_workers: int = 2
    device: str = "auto"
    amp: bool = True
    max_detections: int = 0
    masks: bool = True
    max_skipped_fraction: float = 0.5


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a detector from model.pt (no weight files needed) in eval mode on `device`.

    The loaded model has `.detector_options` (`DetectorOptions`) and `.meta` attached. A
    two-tower model.pt holds its grouping detector too (`grouping_options` + its weights).
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    options = DetectorOptions.from_dict(checkpoint["options"])
    options.backbone_weights = ""
    options.model_weights = ""
    grouping = None
    if options.arch == "two_tower":
        grouping_options = DetectorOptions.from_dict(checkpoint["grouping_options"])
        grouping = (build_detector(grouping_options), grouping_options)
    model = build_detector(options, grouping)
    model.load_state_dict(checkpoint["state_dict"])
    model.detector_options = options
    model.meta = checkpoint.get("meta", {})
    return model.to(resolve_device(str(device)) if isinstance(device, str) else device).eval()


class ImageListDataset(torch.utils.data.Dataset):
    """Images of a COCO json as float (3, H, W) tensors; unreadable ones yield None."""

    def __init__(self, images: list[dict], image_root: str | os.PathLike) -> None:
        self.images = images
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        info = self.images[index]
        expected = (info["height"], info["width"]) if info.get("height") and info.get("width") else None
        try:
            pixels = load_image(self.image_root / info["file_name"], expected)
        except UnreadableImage as err:
            return info["id"], None, str(err)
        return info["id"], torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), ""


def _collate(batch):
    return batch


def detections_to_records(image_id: int, detections: dict, with_masks: bool) -> list[dict]:
    """COCO result records of one image's detections (boxes xyxy -> xywh)."""
    boxes = detections["boxes"].float().cpu().numpy()
    scores = detections["scores"].float().cpu().numpy()
    rles = None
    if with_masks and "masks" in detections:
        rles = encode_masks(detections["masks"][:, 0].cpu().numpy().astype(np.uint8))
    records = []
    for k in range(len(boxes)):
        x0, y0, x1, y1 = (float(v) for v in boxes[k])
        record = {
            "image_id": int(image_id),
            "category_id": 1,
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(scores[k]), 6),
        }
        if rles is not None:
            record["segmentation"] = rles[k]
        records.append(record)
    return records


def predict(
    model_path: str | os.PathLike,
    images_json: str | os.PathLike,
    image_root: str | os.PathLike,
    options: PredictOptions,
    out_json: str | os.PathLike,
) -> dict:
    """Run the detector on every image of `images_json` and write COCO results to `out_json`.

    Args:
        model_path: model.pt of `train_detector`.
        images_json: COCO json whose `images` are predicted (annotations are not used).
        image_root: folder the images' `file_name`s are relative to.
        options: PredictOptions.
        out_json: COCO results json, written atomically (nothing when too many images are unreadable).
    Returns:
        summary {"num_images", "num_skipped", "skipped", "num_detections", "seconds",
        "images_per_second", "device", "masks"}.
    Raises:
        ValueError: more than `options.max_skipped_fraction` of the images cannot be read.
    """
    device = resolve_device(options.device)
    model, with_masks = _prepare_model(model_path, options, device)
    images = read_json(images_json)["images"]
    loader = torch.utils.data.DataLoader(ImageListDataset(images, image_root), batch_size=options.batch_size,
                                         shuffle=False, num_workers=options.num_workers, collate_fn=_collate)
    started = time.time()
    with atomic_path(out_json) as tmp, open(tmp, "w", encoding="utf-8") as f:
        counts = _write_detections(f, loader, model, device, options.amp and device.type == "cuda", with_masks)
        check_skipped(len(counts.skipped), len(images), options.max_skipped_fraction, image_root, counts.skipped,
                      option="predict.max_skipped_fraction")
        f.write("]\n")
    seconds = time.time() - started
    return {
        "num_images": counts.num_images,
        "num_skipped": len(counts.skipped),
        "skipped": counts.skipped,
        "num_detections": counts.num_detections,
        "seconds": seconds,
        "images_per_second": counts.num_images / max(seconds, 1e-9),
        "device": str(device),
        "masks": with_masks,
    }


def _prepare_model(model_path: str | os.PathLike, options: PredictOptions,
                   device: torch.device) -> tuple[nn.Module, bool]:
    """The detector in eval mode and channels_last on `device`, and whether it writes masks."""
    model = load_detector(model_path, device)
    if options.max_detections > 0:
        _set_max_detections(model, options.max_detections)
    model.to(memory_format=torch.channels_last)  # faster on CUDA and on CPU (2x in the mask head)
    det_options: DetectorOptions = model.detector_options
    return model, options.masks and det_options.has_masks


@dataclass
class _Counts:
    """What `_write_detections` wrote: predicted images, detections, skipped images' errors."""

    num_images: int = 0
    num_detections: int = 0
    skipped: list[str] = field(default_factory=list)


def _write_detections(f: TextIO, loader: torch.utils.data.DataLoader, model: nn.Module, device: torch.device,
                      use_amp: bool, with_masks: bool) -> _Counts:
    """Predict batch by batch and stream the records to `f` as a JSON list without its closing `]`.

    Args:
        f: open text file.
        loader: yields lists of (image id, uint8 image or None, error) (`ImageListDataset`).
        model: detector in eval mode on `device`.
        device: where images go.
        use_amp: bf16 autocast (CUDA).
        with_masks: write `segmentation`.
    Returns:
        the counts; unreadable images are logged and listed, not predicted.
    """
    counts = _Counts()
    bar = Progress("predict", total=len(loader.dataset), unit="img")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    f.write("[")
    for batch in loader:
        readable = [(i, img) for i, img, err in batch if img is not None]
        for _, img, err in batch:
            if img is None:
                log.warning("skipping unreadable image: %s", err)
                counts.skipped.append(err)
        if readable:
            tensors = [img.to(device, non_blocking=True).float().div_(255.0) for _, img in readable]
            with torch.inference_mode(), autocast:
                outputs = model(tensors)
            for (image_id, _), detections in zip(readable, outputs):
                for record in detections_to_records(image_id, detections, with_masks):
                    f.write(("" if counts.num_detections == 0 else ",\n") + json.dumps(record))
                    counts.num_detections += 1
            counts.num_images += len(readable)
        bar.update(counts.num_images + len(counts.skipped))
    bar.close()
    return counts


def _set_max_detections(model: nn.Module, max_detections: int) -> None:
    """Override the per-image detection cap of every ROI stage (a two-tower model's two)."""
    for module in model.modules():
        if hasattr(module, "detections_per_img"):
            module.detections_per_img = max_detections
