"""Affinity quality on a validation split, separately near seen and unseen objects.

Targets use the masks of ALL categories. Metrics per group (seen / unseen / all),
where a pair (or, for reduced one-channel models, a pixel's neighbourhood) belongs to
a group when it involves a pixel of an instance of that group's categories:

- GGN's PA quality (`compute_pa_quality`): unweighted BCE and L1 between the predicted
  probability and the target, on valid "inner" pairs (target == 1: both pixels in the
  same instance) and valid "outer" pairs (target < 1: the pair crosses an instance
  boundary; for binary targets this is GGN's target == 0). Summed over all pairs of
  the split, then divided by their count.
- Boundary precision / recall / F: a ground-truth boundary pixel has at least one valid
  neighbour pair (distances of the model) with target 0; a predicted boundary pixel has
  affinity < `threshold` in any channel. Matching uses a tolerance of
  `boundary_tolerance` pixels by dilation (a predicted pixel is correct when a
  ground-truth boundary pixel lies within the (2t+1)^2 window, and vice versa for
  recall); unlike BSDS there is no one-to-one assignment. Counted on the pixels within
  `region_margin` pixels (square window) of the group's objects, so spurious boundaries
  inside objects and in a band of background around them are false positives; ignored
  (crowd) pixels and a frame of max(distance) pixels at the image border (where targets
  leave the image) are excluded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from oln.affinity.model import load_pa_model
from oln.affinity.predict import predict_affinity
from oln.affinity.targets import (
    IGNORE_LABEL,
    affinity_targets,
    boundary_pixels,
    instance_label_map,
    pairs_touching,
)
from oln.data.transforms import ResizeMaxSize
from oln.devices import resolve_device
from oln.io import atomic_path, write_json

GROUPS = ("seen", "unseen", "all")
_SUMS = ("inner_ce", "outer_ce", "inner_l1", "outer_l1", "num_inner", "num_outer",
         "pred_boundary", "pred_boundary_matched", "gt_boundary", "gt_boundary_matched")


@dataclass
class PAEvalOptions:
    """Affinity evaluation options.

    Attributes:
        max_images: evaluate the first N images (0 = all).
        max_size: longer-side limit (-1 = as in training, from the model's meta; 0 = original).
        threshold: affinity below this marks a predicted boundary pixel.
        boundary_tolerance: matching tolerance in pixels (0 = exact).
        region_margin: boundary metrics count pixels within this many pixels of a
            group's objects (>= 1 so the outer side of object boundaries counts).
        grid_images: rows in the image | target | prediction PNG.
        device: auto | cpu | cuda | cuda:N.
    """

    max_images: int = 0
    max_size: int = -1
    threshold: float = 0.5
    boundary_tolerance: int = 1
    region_margin: int = 3
    grid_images: int = 6
    device: str = "auto"


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation of a bool (H, W) mask by `radius` pixels."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[None, None].float(), 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def image_sums(
    prob: torch.Tensor,
    labels: torch.Tensor,
    group_region: torch.Tensor,
    distances: list[int],
    reduction: str,
    threshold: float,
    tolerance: int,
    region_margin: int = 3,
) -> dict[str, float]:
    """Metric numerators/denominators of one image for one group.

    Args:
        prob: (C, H, W) predicted affinity.
        labels: int64 (H, W) instance labels of all categories (-1 ignored).
        group_region: bool (H, W) pixels of the group's instances.
    """
    target, valid = affinity_targets(labels[None], distances, reduction)
    target, valid = target[0], valid[0]
    touch = pairs_touching(group_region[None], distances, reduction)[0]
    p = prob.clamp(1e-6, 1 - 1e-6)
    ce = -(target * p.log() + (1 - target) * (1 - p).log())
    l1 = (p - target).abs()
    inner = valid & touch & (target == 1)
    outer = valid & touch & (target < 1)
    sums = {
        "inner_ce": float(ce[inner].sum()), "outer_ce": float(ce[outer].sum()),
        "inner_l1": float(l1[inner].sum()), "outer_l1": float(l1[outer].sum()),
        "num_inner": float(inner.sum()), "num_outer": float(outer.sum()),
    }
    h, w = labels.shape
    frame = max(distances)
    domain = _dilate(group_region, max(1, region_margin)) & (labels != IGNORE_LABEL)
    inside = torch.zeros_like(domain)
    inside[frame : h - frame, frame : w - frame] = True
    domain &= inside
    gt_b = boundary_pixels(labels[None], distances)[0]
    pred_b = (prob < threshold).any(dim=0)
    sums["pred_boundary"] = float((pred_b & domain).sum())
    sums["pred_boundary_matched"] = float((pred_b & domain & _dilate(gt_b, tolerance)).sum())
    sums["gt_boundary"] = float((gt_b & domain).sum())
    sums["gt_boundary_matched"] = float((gt_b & domain & _dilate(pred_b, tolerance)).sum())
    return sums


def summarize(sums: dict[str, float]) -> dict[str, float]:
    """Turn accumulated sums into the reported metrics."""
    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    precision = ratio(sums["pred_boundary_matched"], sums["pred_boundary"])
    recall = ratio(sums["gt_boundary_matched"], sums["gt_boundary"])
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "inner_ce": ratio(sums["inner_ce"], sums["num_inner"]),
        "outer_ce": ratio(sums["outer_ce"], sums["num_outer"]),
        "inner_l1": ratio(sums["inner_l1"], sums["num_inner"]),
        "outer_l1": ratio(sums["outer_l1"], sums["num_outer"]),
        "boundary_precision": precision,
        "boundary_recall": recall,
        "boundary_f": f,
        "num_inner_pairs": int(sums["num_inner"]),
        "num_outer_pairs": int(sums["num_outer"]),
        "num_gt_boundary_pixels": int(sums["gt_boundary"]),
        "num_pred_boundary_pixels": int(sums["pred_boundary"]),
    }


def evaluate_pa(
    model_path: str | Path,
    val_json: str | Path,
    image_root: str | Path,
    seen_category_ids: list[int],
    unseen_category_ids: list[int],
    options: PAEvalOptions,
    out_json: str | Path,
    out_grid_png: str | Path,
) -> dict:
    """Evaluate a trained affinity model; write metrics json and an example grid PNG.

    Returns:
        {"seen": {...}, "unseen": {...}, "all": {...}, "num_images", settings...}
        with the metrics of `summarize` per group.
    """
    from oln.data.coco import CocoInstances

    device = resolve_device(options.device)
    model, meta = load_pa_model(model_path, device)
    distances, reduction = list(meta["neighbor_distances"]), meta["reduction"]
    max_size = meta.get("data", {}).get("max_size", 0) if options.max_size < 0 else options.max_size
    resize = ResizeMaxSize(max_size)
    dataset = CocoInstances(val_json, image_root, category_ids=None, include_pseudo=False)
    count = len(dataset) if options.max_images <= 0 else min(options.max_images, len(dataset))
    seen, unseen = {int(c) for c in seen_category_ids}, {int(c) for c in unseen_category_ids}
    totals = {g: dict.fromkeys(_SUMS, 0.0) for g in GROUPS}
    examples = []
    for index in range(count):
        image, target = dataset[index]
        image, target = resize(image, target, None)
        labels = instance_label_map(target["masks"].to(device), target["iscrowd"])
        prob = predict_affinity(model, [image], meta, device)[0].to(device)
        cats = target["category_ids"].tolist()
        crowd = target["iscrowd"].tolist()
        for group in GROUPS:
            ids = [i + 1 for i, c in enumerate(cats) if not crowd[i] and
                   (group == "all" or (c in seen if group == "seen" else c in unseen))]
            region = torch.isin(labels, torch.tensor(ids, dtype=torch.int64, device=device))
            sums = image_sums(prob, labels, region, distances, reduction, options.threshold,
                              options.boundary_tolerance, options.region_margin)
            for key, value in sums.items():
                totals[group][key] += value
        if len(examples) < options.grid_images:
            shown, _ = affinity_targets(labels[None], distances, reduction)
            examples.append((image, shown[0].amin(0).cpu(), prob.amin(0).cpu()))
    result = {group: summarize(totals[group]) for group in GROUPS}
    result.update(num_images=count, reduction=reduction, neighbor_distances=distances, max_size=max_size,
                  seen_category_ids=sorted(seen), unseen_category_ids=sorted(unseen), options=asdict(options))
    result["boundary_f_gap_seen_minus_unseen"] = result["seen"]["boundary_f"] - result["unseen"]["boundary_f"]
    write_json(out_json, result, indent=2)
    save_grid(examples, out_grid_png)
    return result


def save_grid(examples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], png_path: str | Path) -> None:
    """Rows of image | target affinity | predicted affinity (min over channels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(examples))
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.5 * rows), squeeze=False)
    for row, (image, target, prob) in enumerate(examples):
        axes[row, 0].imshow(image.permute(1, 2, 0).numpy())
        axes[row, 1].imshow(target.numpy(), cmap="gray", vmin=0, vmax=1)
        axes[row, 2].imshow(prob.numpy(), cmap="gray", vmin=0, vmax=1)
    for ax, title in zip(axes[0], ("image", "target", "prediction")):
        ax.set_title(title)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
