"""Prediction throughput: `oln.detector.predict.predict` on images on disk and the forward pass."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from gpu_bench.common import (
    Context,
    instance_sample,
    known_fields,
    median_seconds,
    peak_memory_mb,
    run_case,
    sync,
    write_image_set,
)
from oln import engine
from oln.checkpoints import save_torch
from oln.detector.model import DetectorOptions, build_detector
from oln.detector.predict import PredictOptions, load_detector, predict
from oln.io import write_json

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
