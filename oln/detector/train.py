"""Train a class-agnostic detector on COCO-format instances with the shared engine.

`train_detector` restricts annotated GT to the seen categories, keeps pseudo-GT
(`pseudo: 1`) whenever `use_pseudo` (the lead's `CocoInstances` keeps pseudo
annotations regardless of the category filter), relabels everything as class 1,
drops crowd boxes and keeps images that end up without boxes (torchvision
samples them as background). Augmentation: horizontal flip (and an optional
random crop) from `oln.data.transforms`; scale augmentation is the detector
transform's random shorter side (`DetectorOptions.train_min_sizes`), because
the model resizes every image to a fixed shorter side anyway.

Outputs in `out_dir`: `model.pt` {"state_dict", "options", "meta"[, "grouping_options"]} (atomic),
`log.jsonl` and `checkpoints/` (written by the engine), `curve.png`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from oln import engine
from oln.checkpoints import save_torch
from oln.data.coco import CocoInstances, collate_list
from oln.data.transforms import build_transforms, select_instances
from oln.detector.model import DetectorOptions, build_detector
from oln.io import read_json
from oln.plots import plot_curve
from oln.schedule import resolve_schedule


def default_detector_train() -> engine.TrainOptions:
    """GGN's detector schedule: SGD 0.02, 8 epochs of 2 images per GPU (8 GPUs), steps after 6 and 7."""
    return engine.TrainOptions(iterations=0, epochs=8, lr_step_epochs=[6, 7], batch_size=2, optimizer="sgd",
                               lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_iters=500, schedule="step",
                               checkpoint_every=2000, log_every=50)


@dataclass
class DetectorTrainOptions:
    """Detector training settings.

    Fields:
        detector: architecture (`DetectorOptions`).
        train: engine settings (`oln.engine.TrainOptions`: iterations, batch size, lr, AMP, ...).
        flip: random horizontal flip (p = 0.5).
        crop_size: random square crop side before the model's resize (0 = off).
    """

    detector: DetectorOptions = field(default_factory=DetectorOptions)
    train: engine.TrainOptions = field(default_factory=lambda: default_detector_train())
    flip: bool = True
    crop_size: int = 0


class DetectorTargets:
    """Dataset transform: augmentation, then class-agnostic detector targets.

    Crowd instances are dropped, labels set to 1, boxes thinner than 1 px dropped;
    `pseudo` is kept so pseudo-GT stays identifiable.
    """

    def __init__(self, flip: bool = True, crop_size: int = 0) -> None:
        self.augment = build_transforms(max_size=0, flip=flip, scale_range=(1.0, 1.0), crop_size=crop_size)

    def __call__(self, image: Tensor, target: dict) -> tuple[Tensor, dict]:
        image, target = self.augment(image, target)
        return image, detector_target(target)


def detector_target(target: dict) -> dict:
    """Class-agnostic training target: no crowd, no degenerate boxes, every label 1."""
    n = len(target["boxes"])
    keep = torch.ones(n, dtype=torch.bool)
    if "iscrowd" in target:
        keep &= target["iscrowd"] == 0
    boxes = target["boxes"]
    if n:
        keep &= (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
    target = select_instances(target, keep)
    target["boxes"] = target["boxes"].float().reshape(-1, 4)
    target["labels"] = torch.ones(len(target["boxes"]), dtype=torch.int64)
    if "pseudo" not in target:
        target["pseudo"] = torch.zeros(len(target["boxes"]), dtype=torch.uint8)
    return target


def build_train_dataset(
    train_json: str | os.PathLike,
    image_root: str | os.PathLike,
    category_ids: Sequence[int] | None,
    use_pseudo: bool,
    flip: bool = True,
    crop_size: int = 0,
    filter_empty_gt: bool = False,
) -> CocoInstances:
    """The dataset the trainer iterates: seen-category GT (+ pseudo-GT when `use_pseudo`).

    With `filter_empty_gt` only images holding an annotated (non-pseudo) seen object are
    used, as in GGN (see `oln.data.filtering`).
    """
    return CocoInstances(
        train_json,
        image_root,
        None if category_ids is None else list(category_ids),
        transform=DetectorTargets(flip, crop_size),
        include_pseudo=use_pseudo,
        filter_empty_gt=filter_empty_gt,
    )


def count_training_boxes(
    train_json: str | os.PathLike, category_ids: Sequence[int] | None, use_pseudo: bool
) -> dict[str, int]:
    """Annotation counts the trainer will use (non-crowd; seen categories; pseudo when enabled)."""
    data = read_json(train_json)
    keep = None if category_ids is None else {int(c) for c in category_ids}
    annotated = pseudo = crowd = 0
    for ann in data.get("annotations", []):
        if ann.get("pseudo", 0):
            pseudo += int(use_pseudo)
        elif keep is None or int(ann["category_id"]) in keep:
            if ann.get("iscrowd", 0):
                crowd += 1
            else:
                annotated += 1
    return {
        "num_images": len(data.get("images", [])),
        "num_annotated": annotated,
        "num_pseudo": pseudo,
        "num_crowd_dropped": crowd,
    }


def detector_loss(model: nn.Module, batch: tuple[list[Tensor], list[dict]], device: torch.device) -> dict:
    """Engine loss function: move the batch to `device` and return the model's loss terms."""
    images, targets = batch
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
        for t in targets
    ]
    return model(images, targets)


def train_detector(
    train_json: str | os.PathLike,
    image_root: str | os.PathLike,
    category_ids: list[int] | None,
    use_pseudo: bool,
    options: DetectorTrainOptions,
    out_dir: str | os.PathLike,
    filter_empty_gt: bool = False,
) -> Path:
    """Train a detector and write `out_dir/model.pt` (+ log.jsonl, curve.png).

    Args:
        train_json: COCO json with annotations (and pseudo annotations flagged `pseudo: 1`).
        image_root: folder the images' `file_name`s are relative to.
        category_ids: annotated categories to learn from (None = all).
        use_pseudo: also learn from the pseudo annotations.
        options: detector + engine settings.
        out_dir: output folder (resumes from its checkpoints).
        filter_empty_gt: train only on images with an annotated seen object (GGN).
    Returns:
        path of model.pt.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = count_training_boxes(train_json, category_ids, use_pseudo)
    if counts["num_annotated"] + counts["num_pseudo"] == 0:
        raise ValueError(
            f"{train_json}: no training boxes left for categories {category_ids} (use_pseudo={use_pseudo})"
        )
    dataset = build_train_dataset(
        train_json, image_root, category_ids, use_pseudo, options.flip, options.crop_size, filter_empty_gt
    )
    engine.seed_model_init(options.train.seed)
    model = build_detector(options.detector)
    started = time.time()
    model = engine.train(model, dataset, collate_list, detector_loss, resolve_schedule(options.train, len(dataset)),
                         out_dir, desc=f"detector {options.detector.arch}")
    model_path = out_dir / "model.pt"
    if int(os.environ.get("RANK", "0")) == 0:
        meta = {
            **counts, "train_json": str(train_json), "image_root": str(image_root), "category_ids": category_ids,
            "use_pseudo": use_pseudo, "num_skipped_images": dataset.num_skipped,
            "num_training_images": len(dataset), "filter_empty_gt": filter_empty_gt,
            "train_options": asdict(options.train), "flip": options.flip, "crop_size": options.crop_size,
            "seconds": time.time() - started, "torch": torch.__version__,
        }
        save_detector(model, options.detector, meta, model_path)
        log_path = out_dir / "log.jsonl"
        if log_path.exists():
            plot_curve(log_path, out_dir / "curve.png",
                       title=f"{options.detector.arch} ({'GT + pseudo' if use_pseudo else 'GT'})")
    return model_path


def save_detector(model: nn.Module, options: DetectorOptions, meta: dict, path: Path) -> None:
    """Write model.pt {"state_dict" (CPU), "options", "meta"[, "grouping_options"]} atomically.

    A two-tower model also stores its grouping tower's options, so `load_detector` rebuilds
    it without the grouping model's file.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    saved = {"state_dict": state, "options": options.to_dict(), "meta": meta}
    if hasattr(model, "grouping_options"):
        saved["grouping_options"] = model.grouping_options.to_dict()
    save_torch(path, saved)
