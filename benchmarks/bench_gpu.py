"""GPU throughput of every stage of the pipeline, one command, about 8 minutes on one GPU.

    python benchmarks/bench_gpu.py [--out results/bench_gpu.json] [--parts pa_train detector_train ...]
    python benchmarks/bench_gpu.py --smoke --out /tmp/bench.json      # tiny sizes on the CPU, seconds

Parts (each in try/except: a failing part is reported and the others still run):

- pa_train: ResNet-50 + UPerNet affinity network at 800x1216 through `oln.engine.train`, batch 1 and
  the largest batch that fits (doubling until out of memory), fp32 and bf16 autocast + channels_last.
- detector_train: class-agnostic Mask R-CNN and OLN, R50-FPN with the paper's heads at 1333x800,
  batch 2/4/8, fp32 vs bf16 autocast + channels_last.
- predict: `oln.detector.predict.predict` with 1500 detections and masks per image at COCO size
  (480x640; images on disk, RLE + json written), and the model's forward pass alone.
- extract: `oln.pseudo.extract.extract_shard` (PA inference on the GPU, GGN's grouping on N CPU
  worker processes) for N = 1, 4, all cores, each in a fresh process; plus PA inference alone and
  grouping alone on one core.
- evaluate: `oln.evaluation.evaluate_recall` on 5,000 images x 1,000 seeded synthetic detections
  (bbox, cross-category protocol), and segm on a subset.
- dag: `snakemake --cores all --configfile config/tiny.yaml --config device=cuda experiment=tiny_cuda`
  in a temporary copy of the repository (with --smoke: a dry run, `snakemake -n`).

Training and prediction figures are medians over timed iterations after warm-up, with
torch.cuda.synchronize(). Models have random weights (nothing is downloaded), so the affinity fed
to grouping is that of an untrained network. A global time guard (--budget-s) gives each part a
share of the time left and skips what does not fit. Peak memory is torch's max_memory_allocated
on CUDA (the process's peak RSS on the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from oln import engine  # noqa: E402
from oln.affinity.model import PAModelOptions, build_pa_model, load_pa_model, save_pa_model  # noqa: E402
from oln.affinity.predict import predict_affinity  # noqa: E402
from oln.affinity.targets import num_affinity_channels  # noqa: E402
from oln.affinity.train import PATargetOptions, PATrainOptions, make_loss_fn, model_meta  # noqa: E402
from oln.checkpoints import save_torch  # noqa: E402
from oln.data.coco import collate_list  # noqa: E402
from oln.detector.model import DetectorOptions, build_detector  # noqa: E402
from oln.detector.predict import PredictOptions, load_detector, predict  # noqa: E402
from oln.detector.train import detector_loss, detector_target  # noqa: E402
from oln.evaluation import evaluate_recall  # noqa: E402
from oln.grouping import affinity_to_proposals  # noqa: E402
from oln.io import read_jsonl, write_json  # noqa: E402
from oln.pseudo.extract import ExtractOptions, extract_shard  # noqa: E402

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


# ----------------------------------------------------------------------------- training throughput


def train_throughput(model: torch.nn.Module, dataset: InMemoryDataset, loss_fn: Callable, batch: int,
                     amp: bool, ctx: Context) -> dict:
    """Run `oln.engine.train` for warmup + iters steps; figures from its per-iteration log."""
    cfg = ctx.cfg
    options = engine.TrainOptions(
        iterations=cfg.warmup + cfg.iters, batch_size=batch, num_workers=0, optimizer="sgd", lr=1e-4,
        warmup_iters=0, schedule="constant", checkpoint_every=10**9, log_every=1, amp=amp, device=cfg.device,
    )
    out_dir = Path(tempfile.mkdtemp(dir=ctx.tmp))
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            engine.train(model, dataset, collate_list, loss_fn, options, out_dir, desc="bench")
        records = read_jsonl(out_dir / "log.jsonl")[cfg.warmup:]
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    iter_s = float(np.median([r["iter_time"] for r in records]))
    data_s = float(np.median([r.get("data_time", 0.0) for r in records]))
    return {
        "batch": batch, "precision": "bf16" if amp else "fp32",
        "autocast": amp and torch.device(cfg.device).type == "cuda",  # the engine ignores amp on the CPU
        "images_per_s": round(batch / iter_s, 3), "iter_s": round(iter_s, 4),
        "data_fraction": round(data_s / iter_s, 3),
        "peak_mem_mb": round(max(r.get("max_mem_mb", 0.0) for r in records), 1),
        "skipped_steps": int(records[-1].get("skipped_steps", 0)),
    }


def search_batches(name: str, case: Callable[[int], dict], batches: list[int], ctx: Context) -> list[dict]:
    """Batch 1, then `batches` ascending until out of memory; the largest that fit is marked."""
    rows, largest = [], None
    for batch in [1, *batches]:
        if ctx.expired() and rows:
            rows.append(skipped(f"{name} batch {batch}"))
            break
        row = run_case(f"{name} batch {batch}", lambda b=batch: case(b))
        rows.append(row)
        if row["status"] != "ok":
            break
        largest = row
    if largest is not None and largest["batch"] > 1:
        largest["largest_batch"] = True
    return rows


def bench_pa_train(ctx: Context) -> list[dict]:
    """PA (ResNet + UPerNet) training throughput, fp32 and bf16, batch 1 and the largest that fits."""
    cfg = ctx.cfg
    samples = [instance_sample(*cfg.pa_hw, cfg.objects_per_image, seed) for seed in range(4)]
    dataset = InMemoryDataset(samples)
    targets = PATargetOptions()
    out_channels = num_affinity_channels(targets.neighbor_distances, targets.reduction)

    def run(widths: dict, amp: bool, batch: int, norm: str) -> dict:
        options = PAModelOptions(**known_fields(PAModelOptions, dict(widths, backbone=cfg.pa_backbone, norm=norm)))
        engine.seed_model_init(0)
        model = build_pa_model(options, out_channels)
        row = train_throughput(model, dataset, make_loss_fn(targets), batch, amp, ctx)
        return {**row, "model": dataclasses.asdict(options), "size": list(cfg.pa_hw)}

    def case(widths: dict, amp: bool, batch: int) -> dict:
        try:
            return run(widths, amp, batch, "bn")
        except ValueError as err:  # BatchNorm of the PPM's 1x1 bin cannot train on one sample
            if batch != 1 or "more than 1 value per channel" not in str(err):
                raise
        free_memory()
        return {**run(widths, amp, batch, "gn"), "note": BN_BATCH1_NOTE}

    rows: list[dict] = []
    for index, widths in enumerate(cfg.pa_widths):
        label = f"{cfg.pa_backbone} head {widths.get('head_channels')}"
        for amp in (True, False):
            name = f"{label} {'bf16' if amp else 'fp32'}"
            if index == 0:
                rows += search_batches(name, lambda b, w=widths, a=amp: case(w, a, b), cfg.pa_search, ctx)
            elif ctx.expired():
                rows.append(skipped(f"{name} batch 1"))
            else:
                rows.append(run_case(f"{name} batch 1", lambda w=widths, a=amp: case(w, a, 1)))
    return rows


def bench_detector_train(ctx: Context) -> list[dict]:
    """Mask R-CNN / OLN training throughput at the paper's sizes, fp32 vs bf16 + channels_last."""
    cfg = ctx.cfg
    samples = [instance_sample(*cfg.det_hw, cfg.objects_per_image, seed) for seed in range(4)]
    dataset = InMemoryDataset([(image, detector_target(target)) for image, target in samples])

    def case(arch: str, amp: bool, batch: int) -> dict:
        options = DetectorOptions.from_dict(dict(cfg.det_options, arch=arch))
        engine.seed_model_init(0)
        model = build_detector(options)
        row = train_throughput(model, dataset, detector_loss, batch, amp, ctx)
        return {**row, "arch": arch, "size": list(cfg.det_hw)}

    rows: list[dict] = []
    for amp in (True, False):  # bf16 (the training default) of every arch first
        for arch in cfg.det_archs:
            name = f"{arch} {cfg.det_options['backbone']} {'bf16+channels_last' if amp else 'fp32'}"
            for batch in cfg.det_batches:
                if ctx.expired() and rows:
                    rows.append(skipped(f"{name} batch {batch}"))
                    continue
                row = run_case(f"{name} batch {batch}", lambda a=arch, m=amp, b=batch: case(a, m, b))
                rows.append(row)
                if row["status"] == "oom":
                    break
    return rows


# ----------------------------------------------------------------------------- prediction


def bench_predict(ctx: Context) -> list[dict]:
    """`predict` end to end (decode, forward, paste, RLE, json) and the forward pass alone."""
    cfg = ctx.cfg
    proposals = max(2000, cfg.predict_max_dets)  # enough RPN proposals for predict_max_dets detections
    options = DetectorOptions.from_dict(dict(cfg.det_options, arch="mask_rcnn", max_detections=cfg.predict_max_dets,
                                             rpn_pre_nms_top_n_test=proposals, rpn_post_nms_top_n_test=proposals))
    engine.seed_model_init(0)
    model = build_detector(options)
    model_path = ctx.tmp / "predict" / "model.pt"
    save_torch(model_path, {"state_dict": model.state_dict(), "options": options.to_dict(), "meta": {}})
    del model
    images_json = write_image_set(ctx.tmp / "predict", cfg.predict_images, cfg.predict_hw, cfg.objects_per_image)
    predict_options = PredictOptions(**known_fields(PredictOptions, dict(
        batch_size=cfg.predict_batch, num_workers=cfg.predict_workers, device=cfg.device, amp=True,
        max_detections=cfg.predict_max_dets, masks=True)))
    rows = [run_case(f"predict {cfg.predict_images} images {cfg.predict_hw[0]}x{cfg.predict_hw[1]}",
                     lambda: _predict_case(model_path, images_json, predict_options, ctx))]
    rows.append(run_case(f"forward only batch {cfg.predict_batch}",
                         lambda: _forward_case(model_path, ctx)))
    return rows


def _predict_case(model_path: Path, images_json: Path, options: PredictOptions, ctx: Context) -> dict:
    out = ctx.tmp / "predict" / "predictions.json"
    data = json.loads(images_json.read_text())
    warm_json = images_json.with_name("warmup.json")
    write_json(warm_json, {**data, "images": data["images"][: options.batch_size]})
    predict(model_path, warm_json, images_json.parent, options, out)  # warm-up
    summaries = []
    for _ in range(ctx.cfg.iters):
        if summaries and ctx.expired():
            break
        sync(ctx.cfg.device)
        summaries.append(predict(model_path, images_json, images_json.parent, options, out))
    rates = [s["images_per_second"] for s in summaries]
    last = summaries[-1]
    return {
        "images_per_s": round(float(np.median(rates)), 3),
        "detections_per_image": round(last["num_detections"] / max(last["num_images"], 1), 1),
        "timed_runs": len(summaries), "images": last["num_images"],
        "json_mb_per_image": round(out.stat().st_size / 2**20 / max(last["num_images"], 1), 2),
        "batch": options.batch_size, "num_workers": options.num_workers, "masks": last.get("masks"),
        "peak_mem_mb": round(peak_memory_mb(ctx.cfg.device), 1),
    }


def _forward_case(model_path: Path, ctx: Context) -> dict:
    cfg = ctx.cfg
    model = load_detector(model_path, cfg.device)
    model.to(memory_format=torch.channels_last)
    images = [instance_sample(*cfg.predict_hw, 1, seed)[0].to(cfg.device) for seed in range(cfg.predict_batch)]
    cuda = torch.device(cfg.device).type == "cuda"
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    counts: list[int] = []

    def step() -> None:
        with torch.inference_mode(), amp:
            outputs = model(images)
        counts.append(len(outputs[0]["boxes"]))

    seconds = median_seconds(step, cfg.warmup, cfg.iters, cfg.device)
    return {"images_per_s": round(cfg.predict_batch / seconds, 3), "batch": cfg.predict_batch,
            "detections_per_image": counts[-1], "peak_mem_mb": round(peak_memory_mb(cfg.device), 1)}


# ----------------------------------------------------------------------------- extraction


class PartialWatcher(threading.Thread):
    """Polls extract_shard's `.partial.jsonl` and records (time, images finished) when it grows."""

    def __init__(self, path: Path, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.path, self.interval = path, interval
        self.events: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        last = -1
        while not self.stop.wait(self.interval):
            try:
                done = self.path.read_bytes().count(b"\n") - 1  # first line: settings header
            except OSError:
                continue
            if done != last and done > 0:
                self.events.append((time.perf_counter(), done))
                last = done

    def steady_rate(self, skip: int) -> float | None:
        """Images/s after the first `skip` images (startup and the first batch excluded)."""
        after = [(t, n) for t, n in self.events if n >= skip]
        if len(after) < 2 or after[-1][1] == after[0][1]:
            return None
        return (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])


def extract_once(spec: dict, workers: int, num_images: int) -> dict:
    """One `extract_shard` call over the first `num_images` images with `workers` grouping processes."""
    out_dir = Path(spec["out_dir"]) / f"workers{workers}"
    out_dir.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(spec["images_json"]).read_text())
    images_json = out_dir / "images.json"
    write_json(images_json, {**data, "images": data["images"][:num_images]})
    options = ExtractOptions(**known_fields(ExtractOptions, dict(num_workers=workers, device=spec["device"])))
    out_path = out_dir / "shard.json"
    watcher = PartialWatcher(Path(str(out_path) + ".partial.jsonl"))
    watcher.start()
    start = time.perf_counter()
    stats = extract_shard(spec["model"], images_json, spec["image_root"], "bench", 0, 1, options, out_path)
    wall = time.perf_counter() - start
    watcher.stop.set()
    watcher.join()
    steady = watcher.steady_rate(options.batch_size)
    return {
        "workers": workers, "images": stats["num_images"], "batch": options.batch_size,
        "images_per_s": round(steady if steady else num_images / wall, 3),
        "images_per_s_incl_startup": round(num_images / wall, 3), "wall_s": round(wall, 2),
        "proposals_per_image": round(stats["num_proposals"] / max(stats["num_images"], 1), 1),
    }


def grouping_probe(spec: dict, repeats: int = 2) -> dict:
    """Seconds of grouping (GGN's settings, top 20) of one predicted affinity map in this process."""
    model, meta = load_pa_model(spec["model"], spec["device"])
    data = json.loads(Path(spec["images_json"]).read_text())
    pixels = cv2.cvtColor(cv2.imread(str(Path(spec["image_root"]) / data["images"][0]["file_name"])),
                          cv2.COLOR_BGR2RGB)
    image = torch.from_numpy(pixels).permute(2, 0, 1).float().div_(255.0)
    affinity = predict_affinity(model, [image], meta, spec["device"])[0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        masks, _ = affinity_to_proposals(affinity, max_proposals=ExtractOptions().top_k)
        times.append(time.perf_counter() - start)
    return {"grouping_s_per_image": round(float(np.median(times)), 3), "proposals": len(masks)}


def extract_rows(spec: dict) -> list[dict]:
    """Extraction for each worker count in the spec (+ the one-core grouping probe), one row each."""
    rows = []
    for workers in spec["workers"]:
        num_images = max(spec["min_images"], spec["images_per_worker"] * workers)
        name = f"extract_shard {workers} workers"
        start = time.perf_counter()
        try:
            row = {"case": name, "status": "ok", **extract_once(spec, workers, num_images)}
        except Exception as err:  # noqa: BLE001 - reported as a row
            row = {"case": name, "status": "error", "error": f"{type(err).__name__}: {err}"[:300],
                   "traceback": traceback.format_exc()[-2000:]}
        rows.append({**row, "seconds": round(time.perf_counter() - start, 2)})
        print_row(rows[-1])
    if spec.get("probe"):
        rows.append(run_case("grouping alone, 1 process", lambda: grouping_probe(spec)))
    return rows


def extract_worker_main(spec_path: str) -> None:
    """Subprocess entry: `extract_rows` of the spec file, printed as `ROW <json>` lines."""
    for row in extract_rows(json.loads(Path(spec_path).read_text())):
        print("ROW " + json.dumps(row), flush=True)


def bench_extract(ctx: Context) -> list[dict]:
    """extract_shard throughput for each worker count, PA inference alone, grouping alone.

    On a GPU each worker count runs in a fresh process (as `oln extract` does): the library forks its
    grouping pool only while CUDA is uninitialised, which it no longer is here. With --smoke all run
    in this process (CPU only, so the pool still forks).
    """
    cfg = ctx.cfg
    width = cfg.pa_widths[0]
    options = PAModelOptions(**known_fields(PAModelOptions, dict(width, backbone=cfg.pa_backbone, norm="bn")))
    train_options = PATrainOptions(model=options)
    engine.seed_model_init(0)
    model = build_pa_model(options, num_affinity_channels(train_options.target.neighbor_distances,
                                                          train_options.target.reduction))
    folder = ctx.tmp / "extract"
    save_pa_model(folder / "pa.pt", model, model_meta(train_options))
    count = max(cfg.extract_min_images, cfg.extract_images_per_worker * max(cfg.extract_workers))
    images_json = write_image_set(folder / "images", count, cfg.extract_hw, cfg.objects_per_image)
    spec = {"model": str(folder / "pa.pt"), "images_json": str(images_json), "image_root": str(images_json.parent),
            "device": cfg.device, "out_dir": str(folder / "runs"), "min_images": cfg.extract_min_images,
            "images_per_worker": cfg.extract_images_per_worker}
    groups = [[n] for n in cfg.extract_workers] if cfg.extract_per_process else [cfg.extract_workers]
    rows = [run_case("PA inference alone", lambda: _pa_inference_case(folder / "pa.pt", ctx))]
    for index, workers in enumerate(groups):
        if ctx.expired():
            rows += [skipped(f"extract_shard {n} workers") for n in workers]
            continue
        group_spec = dict(spec, workers=workers, probe=index == 0)
        if cfg.extract_per_process:
            rows += _extract_subprocess(group_spec, folder / f"spec{index}.json", ctx)
        else:
            rows += extract_rows(group_spec)
    return rows


def _extract_subprocess(spec: dict, spec_path: Path, ctx: Context) -> list[dict]:
    write_json(spec_path, spec)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    command = [sys.executable, str(Path(__file__).resolve()), "--extract-worker", str(spec_path)]
    done = run_process(command, REPO, max(ctx.seconds_left(), 45.0), env)
    rows = [json.loads(line[4:]) for line in done["stdout"].splitlines() if line.startswith("ROW ")]
    for row in rows:
        print_row(row)
    if done["returncode"] != 0 or not rows:
        rows.append({"case": f"extract subprocess {spec['workers']}", "status": "error",
                     "error": f"exit {done['returncode']}: {done['stderr'][-1500:]}"})
    return rows


def _pa_inference_case(model_path: Path, ctx: Context) -> dict:
    """predict_affinity alone (host->device copy, forward, sigmoid, copy back) at the extraction size."""
    cfg = ctx.cfg
    model, meta = load_pa_model(model_path, cfg.device)
    batch = ExtractOptions().batch_size
    images = [instance_sample(*cfg.extract_hw, 1, seed)[0] for seed in range(batch)]
    seconds = median_seconds(lambda: predict_affinity(model, images, meta, cfg.device, batch_size=batch),
                             cfg.warmup, cfg.iters, cfg.device)
    return {"images_per_s": round(batch / seconds, 3), "batch": batch, "size": list(cfg.extract_hw),
            "peak_mem_mb": round(peak_memory_mb(cfg.device), 1)}


# ----------------------------------------------------------------------------- evaluation


def synthetic_recall_case(num_images: int, dets_per_image: int, seed: int, with_segm: bool) -> tuple[dict, list]:
    """Seeded GT (2-14 boxes per image, 80 categories, 3% crowd) and scored detections (40% near GT)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for image_id in range(1, num_images + 1):
        height, width = int(rng.integers(360, 481)), int(rng.integers(480, 641))
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id:06d}.png"})
        limit = np.array([width, height], np.float64)
        sizes = np.exp(rng.uniform(np.log(8), np.log(0.7 * min(height, width)), (int(rng.integers(2, 15)), 2)))
        gt = np.concatenate([rng.uniform(0, 1, sizes.shape) * (limit - sizes), sizes], axis=1)
        for box in gt.round(2).tolist():
            x, y, w, h = box
            ann = {"id": len(annotations) + 1, "image_id": image_id, "bbox": box, "area": w * h,
                   "category_id": int(rng.integers(1, NUM_CATEGORIES + 1)), "iscrowd": int(rng.random() < 0.03)}
            if with_segm:
                ann["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
            annotations.append(ann)
        near = gt[rng.integers(0, len(gt), int(0.4 * dets_per_image))]
        near = near + rng.normal(0, 0.12, near.shape) * np.tile(near[:, 2:], 2)
        far = np.exp(rng.uniform(np.log(4), np.log(0.8 * min(height, width)), (dets_per_image - len(near), 2)))
        boxes = np.concatenate([near, np.concatenate([rng.uniform(0, 1, far.shape) * (limit - far), far], 1)])
        boxes[:, :2] = np.clip(boxes[:, :2], 0, limit - 2)
        boxes[:, 2:] = np.clip(boxes[:, 2:], 1, limit - boxes[:, :2])
        detections += _detection_records(image_id, boxes, rng.random(len(boxes)), (height, width), with_segm)
    categories = [{"id": c, "name": f"category{c}"} for c in range(1, NUM_CATEGORIES + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def _detection_records(image_id: int, boxes: np.ndarray, scores: np.ndarray, hw: tuple[int, int],
                       with_segm: bool) -> list[dict]:
    records = [{"image_id": image_id, "category_id": 1, "bbox": box, "score": score}
               for box, score in zip(boxes.round(2).tolist(), scores.round(6).tolist())]
    if with_segm:
        from pycocotools import mask as mask_utils

        for record, rle in zip(records, mask_utils.frPyObjects(boxes, hw[0], hw[1])):
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return records


def bench_evaluate(ctx: Context) -> list[dict]:
    """evaluate_recall (cross-category, 20 seen categories) on seeded synthetic data, bbox then segm."""
    cfg = ctx.cfg
    rows = [run_case(f"bbox {cfg.eval_images} images x {cfg.eval_dets} detections",
                     lambda: _evaluate_case(cfg.eval_images, "bbox", ctx))]
    name = f"segm {cfg.eval_segm_images} images x {cfg.eval_dets} detections"
    if cfg.eval_segm_images <= 0:
        return rows
    rows.append(skipped(name) if ctx.expired() else run_case(name, lambda: _evaluate_case(cfg.eval_segm_images,
                                                                                         "segm", ctx)))
    return rows


def _evaluate_case(num_images: int, iou_type: str, ctx: Context) -> dict:
    cfg = ctx.cfg
    start = time.perf_counter()
    gc.disable()  # millions of small dicts: the cyclic GC would take most of the build time
    try:
        gt, detections = synthetic_recall_case(num_images, cfg.eval_dets, seed=0, with_segm=iou_type == "segm")
    finally:
        gc.enable()
    build_s = time.perf_counter() - start
    times, result = [], {}
    for repeat in range(cfg.eval_repeats):
        if repeat and ctx.expired():
            break
        start = time.perf_counter()
        result = evaluate_recall(gt, detections, iou_type, SEEN_CATEGORIES, num_workers=cfg.eval_workers)
        times.append(time.perf_counter() - start)
    seconds = float(np.median(times))
    return {"eval_s": round(seconds, 2), "images_per_s": round(num_images / seconds, 1), "repeats": len(times),
            "build_s": round(build_s, 2), "num_workers": cfg.eval_workers, "num_detections": len(detections),
            "num_gt": result.get("num_gt"), "AR@100": result.get("AR@100")}


# ----------------------------------------------------------------------------- DAG


def run_process(command: list[str], cwd: Path, timeout: float, env: dict | None = None) -> dict:
    """Run `command` in its own process group; on timeout the group is killed."""
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        stderr += f"\n[bench_gpu] killed after {timeout:.0f} s (time budget)"
    return {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}


def copy_workflow(dest: Path) -> Path:
    """What Snakemake needs (Snakefile, workflow/, config/, envs/, oln/), as tests/test_workflow.py copies it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config", "envs", "oln"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def bench_dag(ctx: Context) -> list[dict]:
    """The tiny config through Snakemake with device cuda (a dry run with --smoke)."""
    def case() -> dict:
        workdir = copy_workflow(ctx.tmp / "dag")
        command = ["snakemake", "--cores", "all", "--configfile", "config/tiny.yaml",
                   "--config", "device=cuda", "experiment=tiny_cuda"]
        if ctx.cfg.dag_dry_run:
            command.insert(1, "-n")
        start = time.perf_counter()
        done = run_process(command, workdir, max(ctx.seconds_left(), 30.0))
        wall = time.perf_counter() - start
        if done["returncode"] != 0:
            raise RuntimeError(f"snakemake exit {done['returncode']}: {(done['stdout'] + done['stderr'])[-1500:]}")
        jobs = re.search(r"^total\s+(\d+)", done["stdout"] + done["stderr"], re.MULTILINE)
        summary = workdir / "results" / "tiny_cuda" / "summary.csv"
        return {"wall_s": round(wall, 2), "jobs": int(jobs.group(1)) if jobs else None,
                "dry_run": ctx.cfg.dag_dry_run, "summary_written": summary.exists(), "command": " ".join(command)}

    return [run_case("snakemake tiny (dry run)" if ctx.cfg.dag_dry_run else "snakemake tiny device=cuda", case)]


# ----------------------------------------------------------------------------- driver

BENCHES: dict[str, Callable[[Context], list[dict]]] = {
    "pa_train": bench_pa_train, "detector_train": bench_detector_train, "predict": bench_predict,
    "extract": bench_extract, "evaluate": bench_evaluate, "dag": bench_dag,
}
SHOWN = ("images_per_s", "peak_mem_mb", "batch", "detections_per_image", "data_fraction", "eval_s", "wall_s",
         "grouping_s_per_image", "images_per_s_incl_startup", "largest_batch", "note", "error")


def print_row(row: dict) -> None:
    figures = "  ".join(f"{k}={row[k]}" for k in SHOWN if row.get(k) is not None)
    print(f"{'':<15}{row['case'][:52]:<53}{row['status']:<8}{figures}"[:300], flush=True)


def run_part(part: str, remaining: list[str], cfg: BenchConfig, budget: Budget, tmp: Path) -> dict:
    """One part in try/except; skipped when the budget is nearly spent."""
    if budget.left() < MIN_PART_SECONDS:
        print(f"{part:<15}skipped: {budget.left():.0f} s of the budget left", flush=True)
        return {"status": "skipped", "error": "time budget", "rows": []}
    ctx = Context(cfg, tmp / part, budget.part_deadline(part, remaining))
    ctx.tmp.mkdir(parents=True, exist_ok=True)
    print(f"== {part} (deadline in {ctx.seconds_left():.0f} s)", flush=True)
    start = time.perf_counter()
    try:
        rows = BENCHES[part](ctx)
        failed = [r for r in rows if r["status"] == "error"]
        result = {"status": "error" if failed else "ok", "rows": rows}
        if failed:
            result["error"] = failed[0].get("error", "")
    except Exception as err:  # noqa: BLE001 - a failing part must not stop the others
        result = {"status": "error", "error": f"{type(err).__name__}: {err}"[:500],
                  "traceback": traceback.format_exc()[-3000:], "rows": []}
        print(f"{part:<15}error: {result['error']}", flush=True)
    finally:
        shutil.rmtree(ctx.tmp, ignore_errors=True)
        free_memory()
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def print_table(report: dict) -> None:
    env = report["environment"]
    print(f"\n# bench_gpu: {env['gpu'] or 'CPU'} | torch {env['torch']} | CUDA {env['cuda']} | "
          f"{env['cpu_count']} CPUs | {report['total_s']:.0f} s of {report['budget_s']:.0f} s budget")
    for part, result in report["parts"].items():
        print(f"{part:<15}{'(part)':<53}{result['status']:<8}{result['seconds']} s {result.get('error', '')}"[:300])
        for row in result["rows"]:
            print_row(row)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("results/bench_gpu.json"), help="JSON report path")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="parts to run, in order")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (a few seconds per part)")
    parser.add_argument("--budget-s", type=float, default=460.0,
                        help="time budget of the parts in seconds (8 min with start-up and imports)")
    parser.add_argument("--device", default=None, help="override the device (default: cuda; cpu with --smoke)")
    parser.add_argument("--extract-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.extract_worker:
        extract_worker_main(args.extract_worker)
        return 0
    cfg = smoke_config() if args.smoke else full_config()
    if args.device:
        cfg.device = args.device
    budget = Budget(args.budget_s)
    report: dict = {"smoke": args.smoke, "budget_s": args.budget_s, "environment": environment(cfg.device),
                    "config": dataclasses.asdict(cfg), "parts": {}}
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp:
        for index, part in enumerate(args.parts):
            report["parts"][part] = run_part(part, args.parts[index:], cfg, budget, Path(tmp))
            report["total_s"] = round(time.perf_counter() - budget.start, 2)
            write_json(args.out, report, indent=1)  # after every part: a killed run keeps what it measured
    print_table(report)
    print(f"\nwrote {args.out}")
    return 0 if all(p["status"] != "error" for p in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
