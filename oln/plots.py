"""Figures: AR@k curves, training curves, and detections side by side on val images.

All figures are written atomically as PNG with matplotlib's Agg backend.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from oln.io import atomic_path, read_jsonl  # noqa: E402

LOG_FIELDS_NOT_PLOTTED = {"iter", "lr", "iter_time", "data_time", "max_mem_mb", "skipped", "skipped_steps", "time"}


def save_figure(fig: plt.Figure, path: str | os.PathLike) -> None:
    """Write `fig` to `path` atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def ar_curve_points(metrics: Mapping[str, float]) -> tuple[list[int], list[float]]:
    """(k, AR@k) pairs of an evaluation dict, sorted by k."""
    points = sorted((int(key[3:]), value) for key, value in metrics.items()
                    if key.startswith("AR@") and key[3:].isdigit())
    return [k for k, _ in points], [v for _, v in points]


def plot_ar_curves(evaluations: Mapping[str, Mapping[str, dict]], path: str | os.PathLike,
                   title: str = "") -> None:
    """AR@k against k (log scale) for every evaluation, one panel per iou_type.

    Args:
        evaluations: name -> {iou_type: metrics dict with `AR@k` keys}.
        path: PNG to write.
    """
    iou_types = [t for t in ("bbox", "segm") if any(t in e for e in evaluations.values())]
    fig, axes = plt.subplots(1, max(1, len(iou_types)), figsize=(5.2 * max(1, len(iou_types)), 4), squeeze=False)
    for ax, iou_type in zip(axes[0], iou_types):
        for name, evaluation in evaluations.items():
            if iou_type not in evaluation:
                continue
            ks, values = ar_curve_points(evaluation[iou_type])
            ax.plot(ks, [100 * v for v in values], marker="o", markersize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("k (detections per image)")
        ax.set_ylabel("AR@k on unseen categories (%)")
        ax.set_title({"bbox": "box", "segm": "mask"}[iou_type])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def loss_keys(records: Sequence[dict]) -> list[str]:
    """Numeric log fields that are loss terms (everything but bookkeeping fields)."""
    keys: dict[str, None] = {}
    for record in records:
        for key, value in record.items():
            if key not in LOG_FIELDS_NOT_PLOTTED and isinstance(value, int | float):
                keys[key] = None
    return list(keys)


def plot_log(ax: plt.Axes, records: Sequence[dict], keys: Sequence[str] | None = None, title: str = "") -> None:
    """Draw loss terms (and lr on a twin axis) of a JSONL training log on `ax`."""
    keys = list(keys) if keys else loss_keys(records)
    for key in keys:
        points = [(r["iter"], r[key]) for r in records if isinstance(r.get(key), int | float)]
        if points:
            its, values = zip(*points)
            ax.plot(its, values, label=key, linewidth=1.2 if key == "loss" else 0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    lr_points = [(r["iter"], r["lr"]) for r in records if isinstance(r.get("lr"), int | float)]
    if lr_points:
        twin = ax.twinx()
        its, values = zip(*lr_points)
        twin.plot(its, values, color="grey", linestyle="--", linewidth=0.8, label="lr")
        twin.set_ylabel("lr", color="grey")
    ax.legend(fontsize=7, loc="upper right")


def plot_training_curves(logs: Mapping[str, str | os.PathLike], path: str | os.PathLike) -> None:
    """One panel per training log (name -> log.jsonl) with every loss term and the lr."""
    names = list(logs)
    cols = min(3, max(1, len(names)))
    rows = math.ceil(max(1, len(names)) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        plot_log(ax, read_jsonl(logs[name]), title=name)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def plot_curve(log_path: str | os.PathLike, out_png: str | os.PathLike, keys: Sequence[str] | None = None,
               title: str = "") -> None:
    """`oln plot-curve`: the chosen keys (default: every loss term) of one JSONL log."""
    records = read_jsonl(log_path)
    if not records:
        raise ValueError(f"{log_path}: no log records")
    missing = [k for k in keys or [] if not any(k in r for r in records)]
    if missing:
        raise ValueError(f"{log_path}: keys {missing} not in the log (have: {loss_keys(records)})")
    fig, ax = plt.subplots(figsize=(6.5, 4))
    plot_log(ax, records, keys, title or str(log_path))
    save_figure(fig, out_png)


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.45,
                  seed: int = 0) -> np.ndarray:
    """RGB uint8 image with each boolean mask blended in its own colour."""
    out = image.astype(np.float32).copy()
    rng = np.random.default_rng(seed)
    for mask in masks:
        colour = rng.uniform(60, 255, size=3)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return out.clip(0, 255).astype(np.uint8)


def draw_outlines(ax: plt.Axes, masks: Sequence[np.ndarray], colours: Sequence[str], width: float = 1.2) -> None:
    """Contours of boolean masks on `ax`, one colour each."""
    for mask, colour in zip(masks, colours):
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=width)
