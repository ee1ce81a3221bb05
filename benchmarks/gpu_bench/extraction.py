"""Pseudo-GT extraction throughput (PA inference + grouping workers), each run in a fresh process."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

import cv2
import numpy as np
import torch

from gpu_bench.common import (
    REPO,
    Context,
    instance_sample,
    known_fields,
    median_seconds,
    peak_memory_mb,
    print_row,
    run_case,
    skipped,
    write_image_set,
)
from gpu_bench.dag import run_process
from oln import engine
from oln.affinity.model import PAModelOptions, build_pa_model, load_pa_model, save_pa_model
from oln.affinity.predict import predict_affinity
from oln.affinity.targets import num_affinity_channels
from oln.affinity.train import PATrainOptions, model_meta
from oln.grouping import affinity_to_proposals
from oln.io import write_json
from oln.pseudo.extract import ExtractOptions, extract_shard

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
    command = [sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--extract-worker", str(spec_path)]
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
