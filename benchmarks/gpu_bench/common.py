"""Shared pieces of the GPU benchmark: sizes, the time budget, timing helpers, synthetic data."""

from __future__ import annotations

import dataclasses
import gc
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


from oln.io import write_json  # noqa: E402

PARTS = ("pa_train", "detector_train", "predict", "extract", "evaluate", "dag")
# Expected seconds per part on one GPU: each part gets this share of the time left.
PART_WEIGHTS = {"pa_train": 90, "detector_train": 100, "predict": 40, "extract": 70, "evaluate": 60, "dag": 120}
MIN_PART_SECONDS = 15.0  # a part is skipped when less than this is left of the budget
PAPER_HEADS = dict(backbone="resnet50", fpn_channels=256, box_head_dim=1024, mask_head_convs=4,
                   mask_head_channels=256, rois_per_image=512, anchor_ratios=[1.0])
BN_BATCH1_NOTE = ("norm bn fails at batch 1 in one process (BatchNorm after the PPM's 1x1 pooling gets one value "
                  "per channel); measured with norm gn")
NUM_CATEGORIES, SEEN_CATEGORIES = 80, list(range(1, 21))  # COCO-like: 20 seen (VOC), 60 unseen


@dataclass
class BenchConfig:
    """Sizes of every part (`full_config` on a GPU, `smoke_config` on the CPU)."""

    device: str
    warmup: int
    iters: int
    pa_backbone: str
    pa_widths: list[dict]  # first: batch 1 + batch search; others: batch 1 only
    pa_hw: tuple[int, int]
    pa_search: list[int]
    det_options: dict
    det_hw: tuple[int, int]
    det_batches: list[int]
    det_archs: list[str]
    objects_per_image: int
    predict_hw: tuple[int, int]
    predict_images: int
    predict_batch: int
    predict_workers: int
    predict_max_dets: int
    extract_hw: tuple[int, int]
    extract_workers: list[int]
    extract_images_per_worker: int
    extract_min_images: int
    eval_images: int
    eval_dets: int
    eval_segm_images: int
    eval_repeats: int
    eval_workers: int
    dag_dry_run: bool
    extract_per_process: bool = True


def full_config() -> BenchConfig:
    """The GPU benchmark: paper sizes."""
    cores = len(os.sched_getaffinity(0))  # "all cores": those this process may use (Slurm allocation)
    return BenchConfig(
        device="cuda", warmup=2, iters=3,
        pa_backbone="resnet50",
        # GGN: PPM 512, FPN + fusion 256 (PAModelOptions.ppm_channels / head_channels; fields the
        # model does not have are dropped, so an older model gets head_channels=256 everywhere).
        pa_widths=[dict(head_channels=256, ppm_channels=512)],
        pa_hw=(800, 1216), pa_search=[2, 4, 8, 16, 32],
        det_options=dict(PAPER_HEADS, min_size=800, max_size=1333, max_detections=1500),
        det_hw=(800, 1333), det_batches=[2, 4, 8], det_archs=["mask_rcnn", "oln"], objects_per_image=7,
        predict_hw=(480, 640), predict_images=8, predict_batch=4, predict_workers=4, predict_max_dets=1500,
        extract_hw=(480, 640), extract_workers=sorted({1, min(4, cores), cores}),
        extract_images_per_worker=3, extract_min_images=6,
        eval_images=5000, eval_dets=1000, eval_segm_images=500, eval_repeats=2, eval_workers=0,
        dag_dry_run=False,
    )


def smoke_config() -> BenchConfig:
    """Every part in seconds on the CPU: tiny images, slim backbones, 2 timed iterations."""
    slim = dict(backbone="resnet18_w8", fpn_channels=16, box_head_dim=32, mask_head_convs=1, mask_head_channels=8,
                rois_per_image=16, anchor_ratios=[1.0], anchor_sizes=[8, 16, 32, 64, 128], min_size=64, max_size=96,
                max_detections=50, rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
                rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100)
    return BenchConfig(
        device="cpu", warmup=1, iters=2,
        pa_backbone="resnet18_w8", pa_widths=[dict(head_channels=16)], pa_hw=(64, 96), pa_search=[2],
        det_options=slim, det_hw=(64, 96), det_batches=[2], det_archs=["mask_rcnn", "oln"], objects_per_image=3,
        predict_hw=(64, 96), predict_images=2, predict_batch=2, predict_workers=0, predict_max_dets=50,
        extract_hw=(64, 96), extract_workers=[1, 2], extract_images_per_worker=1, extract_min_images=2,
        eval_images=20, eval_dets=50, eval_segm_images=20, eval_repeats=2, eval_workers=1,
        dag_dry_run=True, extract_per_process=False,
    )


class Budget:
    """Global time guard: each part gets its weight's share of the time left."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def part_deadline(self, part: str, remaining_parts: list[str]) -> float:
        """perf_counter() time by which `part` should be done."""
        total = sum(PART_WEIGHTS[p] for p in remaining_parts) or 1
        return time.perf_counter() + max(self.left(), 0.0) * PART_WEIGHTS[part] / total


@dataclass
class Context:
    """What a part needs: sizes, a scratch folder and its deadline."""

    cfg: BenchConfig
    tmp: Path
    deadline: float

    def expired(self) -> bool:
        return time.perf_counter() > self.deadline

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()


# ----------------------------------------------------------------------------- helpers


def known_fields(cls: type, values: dict) -> dict:
    """`values` restricted to the fields `cls` has (robust to options added or removed)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_seconds(fn: Callable[[], Any], warmup: int, iters: int, device: str) -> float:
    """Median wall seconds of `fn()` over `iters` calls after `warmup` calls (synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in text or "alloc_failed" in text


def run_case(name: str, fn: Callable[[], dict]) -> dict:
    """{"case", "status": ok | oom | error, figures...}; memory is freed whatever happens."""
    started = time.perf_counter()
    try:
        row = {"case": name, "status": "ok", **fn()}
    except Exception as err:  # noqa: BLE001 - every failure becomes a row
        status = "oom" if is_oom(err) else "error"
        row = {"case": name, "status": status, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        if status == "error":
            row["traceback"] = traceback.format_exc()[-2000:]
    row["seconds"] = round(time.perf_counter() - started, 2)
    free_memory()
    print_row(row)
    return row


def skipped(name: str, why: str = "time budget") -> dict:
    row = {"case": name, "status": "skipped", "error": why}
    print_row(row)
    return row


def environment(device: str) -> dict:
    """GPU, library versions, CPU count, commit."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True).stdout.strip())
    import torchvision

    return {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)),
        "python": platform.python_version(), "platform": platform.platform(), "commit": commit or None,
        "uncommitted_changes": dirty,
    }


# ----------------------------------------------------------------------------- synthetic data


def synthetic_scene(height: int, width: int, num_objects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded RGB uint8 (H, W, 3) image of filled ellipses/rectangles and their uint8 (N, H, W) masks."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    masks = np.zeros((num_objects, height, width), np.uint8)
    scale = min(height, width)
    for k in range(num_objects):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.uniform(0.05, 0.3) * scale) + 2, int(rng.uniform(0.05, 0.3) * scale) + 2)
        if rng.random() < 0.5:
            cv2.ellipse(masks[k], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            cv2.rectangle(masks[k], (centre[0] - axes[0], centre[1] - axes[1]),
                          (centre[0] + axes[0], centre[1] + axes[1]), 1, -1)
        image[masks[k] > 0] = rng.integers(0, 256, 3, dtype=np.uint8)
    return image, masks


def instance_sample(height: int, width: int, num_objects: int, seed: int) -> tuple[torch.Tensor, dict]:
    """(image float (3, H, W) in [0, 1], target) as `oln.data.coco.CocoInstances` yields them."""
    pixels, masks = synthetic_scene(height, width, num_objects, seed)
    boxes = []
    for mask in masks:
        ys, xs = np.nonzero(mask)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    n = len(masks)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "masks": torch.from_numpy(masks),
        "labels": torch.ones(n, dtype=torch.int64),
        "category_ids": torch.ones(n, dtype=torch.int64),
        "iscrowd": torch.zeros(n, dtype=torch.uint8),
        "pseudo": torch.zeros(n, dtype=torch.uint8),
        "image_id": seed,
        "orig_size": (height, width),
    }
    return torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0), target


class InMemoryDataset(torch.utils.data.Dataset):
    """A few pre-built samples, cycled (no decoding: the figures are the training step's)."""

    def __init__(self, samples: list[tuple[torch.Tensor, dict]]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image, target = self.samples[index]
        return image, dict(target)


def write_image_set(folder: Path, count: int, hw: tuple[int, int], num_objects: int) -> Path:
    """`count` synthetic PNGs in `folder` and their images json (id, file_name, height, width)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(count):
        pixels, _ = synthetic_scene(hw[0], hw[1], num_objects, seed=1000 + index)
        name = f"{index:06d}.png"
        cv2.imwrite(str(folder / name), cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": name, "height": hw[0], "width": hw[1]})
    path = folder / "images.json"
    write_json(path, {"images": images, "annotations": [], "categories": [{"id": 1, "name": "object"}]})
    return path


SHOWN = ("images_per_s", "peak_mem_mb", "batch", "detections_per_image", "data_fraction", "eval_s", "wall_s",
         "grouping_s_per_image", "images_per_s_incl_startup", "largest_batch", "note", "error")


def print_row(row: dict) -> None:
    figures = "  ".join(f"{k}={row[k]}" for k in SHOWN if row.get(k) is not None)
    print(f"{'':<15}{row['case'][:52]:<53}{row['status']:<8}{figures}"[:300], flush=True)
