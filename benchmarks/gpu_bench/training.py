"""Training throughput of the affinity network and the detectors (fp32 and bf16)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from gpu_bench.common import (
    BN_BATCH1_NOTE,
    Context,
    InMemoryDataset,
    free_memory,
    instance_sample,
    known_fields,
    run_case,
    skipped,
)
from oln import engine
from oln.affinity.model import PAModelOptions, build_pa_model
from oln.affinity.targets import num_affinity_channels
from oln.affinity.train import PATargetOptions, make_loss_fn
from oln.data.coco import collate_list
from oln.detector.model import DetectorOptions, build_detector
from oln.detector.train import detector_loss, detector_target
from oln.io import read_jsonl

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
