"""Speed / memory / quality benchmark of oln.grouping.affinity_to_proposals.

Seeded synthetic affinity maps (random ellipses and polygons on a textured
background; affinity low on object boundaries, blurred, light noise) at three
sizes, each grouping setting run in its own subprocess so peak memory is per case.

Usage:
    PYTHONPATH=. python3 benchmarks/bench_grouping.py [--sizes 128x128 320x480 800x1216] [--exact]
        [--repeat N]

Columns: seconds (fastest of `--repeat` untraced calls, after a warm-up call on a small map;
the minimum is robust to other processes sharing the cores), peak RSS of the
process and its growth during the call (MB), tracemalloc peak of numpy/Python
allocations during a second, traced call (MB), proposals returned, and the mean over true
objects of the best IoU among the top 20 proposals.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import tracemalloc

import cv2
import numpy as np

SETTINGS = {
    "fast": dict(orientation=False, globalization=0.0),
    "orientation": dict(orientation=True, globalization=0.0),
    "orient+global": dict(orientation=True, globalization=0.5),
    "orient+global exact": dict(orientation=True, globalization=0.5, spectral_max_pixels=None),
}


def synthetic_affinity(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A synthetic affinity map and the visible masks of its objects."""
    rng = np.random.default_rng(seed)
    scale = min(height, width)
    owner = np.zeros((height, width), np.int32)
    affinity = 0.35 + 0.1 * cv2.GaussianBlur(
        rng.random((height, width)).astype(np.float32), (0, 0), scale / 20
    )
    levels = [0.0]
    num_objects = int(rng.integers(4, 9)) if scale < 200 else int(rng.integers(8, 16))
    for index in range(1, num_objects + 1):
        canvas = np.zeros((height, width), np.uint8)
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = rng.uniform(0.06, 0.25, 2) * scale
        if rng.random() < 0.5:
            axes = (int(size[0]), int(size[1]))
            cv2.ellipse(canvas, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 8))))
            radius = rng.uniform(0.6, 1.0, angles.size) * size.mean()
            points = np.stack([center[0] + radius * np.cos(angles), center[1] + radius * np.sin(angles)], 1)
            cv2.fillPoly(canvas, [points.astype(np.int32)], 1)
        owner[canvas > 0] = index
        levels.append(float(rng.uniform(0.7, 0.95)))
    affinity = np.where(owner > 0, np.asarray(levels, np.float32)[owner], affinity)
    edges = np.zeros((height, width), np.uint8)
    edges[:, 1:] |= (owner[:, 1:] != owner[:, :-1]).astype(np.uint8)
    edges[1:] |= (owner[1:] != owner[:-1]).astype(np.uint8)
    thickness = max(1, scale // 160)
    edges = cv2.dilate(edges, np.ones((thickness, thickness), np.uint8))
    affinity[edges > 0] = 0.05
    sigma = max(1.0, scale / 320)
    affinity = cv2.GaussianBlur(affinity, (0, 0), sigma) + rng.normal(0, 0.02, affinity.shape).astype(
        np.float32
    )
    masks = [owner == i for i in range(1, num_objects + 1) if (owner == i).sum() >= 0.0005 * owner.size]
    return np.clip(affinity, 0, 1).astype(np.float32), masks


def mean_best_iou(proposals: np.ndarray, objects: list[np.ndarray], top: int = 20) -> float:
    """Mean over true objects of the best IoU among the first `top` proposals."""
    proposals = proposals[:top].reshape(len(proposals[:top]), -1)
    scores = []
    for obj in objects:
        flat = obj.ravel()
        inter = (proposals & flat).sum(1)
        union = (proposals | flat).sum(1)
        scores.append(float((inter / np.maximum(union, 1)).max()) if len(proposals) else 0.0)
    return float(np.mean(scores))


def run_case(size: str, setting: str, repeat: int = 1) -> dict:
    """Run one case in this process and return its measurements."""
    from oln.grouping import affinity_to_proposals

    height, width = (int(v) for v in size.split("x"))
    affinity, objects = synthetic_affinity(height, width)
    warm, _ = synthetic_affinity(64, 64, seed=1)
    affinity_to_proposals(warm, **SETTINGS[setting])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        masks, scores = affinity_to_proposals(affinity, **SETTINGS[setting])
        seconds = min(seconds, time.perf_counter() - start)
        del masks, scores
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()  # second, traced call (tracemalloc slows the first one down)
    masks, scores = affinity_to_proposals(affinity, **SETTINGS[setting])
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return dict(
        size=size,
        setting=setting,
        seconds=seconds,
        rss_peak_mb=rss_peak,
        rss_growth_mb=rss_peak - rss_before,
        traced_peak_mb=traced_peak / 2**20,
        proposals=len(masks),
        objects=len(objects),
        best_iou_top20=mean_best_iou(masks, objects),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["128x128", "320x480", "800x1216"])
    parser.add_argument("--settings", nargs="+", default=["fast", "orientation", "orient+global"])
    parser.add_argument("--exact", action="store_true", help="also run exact globalisation (not at 800x1216)")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per case; the fastest is reported")
    parser.add_argument("--case", nargs=2, metavar=("SIZE", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(*args.case, repeat=args.repeat)))
        return
    settings = list(args.settings) + (["orient+global exact"] if args.exact else [])
    header = (
        f"{'size':>9} {'setting':>20} {'s':>7} {'rss MB':>7} {'+rss MB':>8} {'traced MB':>9} "
        f"{'props':>5} {'objs':>4} {'bestIoU@20':>10}"
    )
    print(header)
    for size in args.sizes:
        for setting in settings:
            if setting.endswith("exact") and size == "800x1216":
                continue
            env_cmd = [sys.executable, __file__, "--case", size, setting, "--repeat", str(args.repeat)]
            out = subprocess.run(
                env_cmd,
                capture_output=True,
                text=True,
                check=True,
                env={
                    "OMP_NUM_THREADS": "1",
                    "OPENBLAS_NUM_THREADS": "1",
                    "MKL_NUM_THREADS": "1",
                    "PYTHONPATH": ".",
                    "PATH": "/usr/bin:/bin",
                },
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{r['size']:>9} {r['setting']:>20} {r['seconds']:7.2f} {r['rss_peak_mb']:7.0f} "
                f"{r['rss_growth_mb']:8.0f} {r['traced_peak_mb']:9.0f} {r['proposals']:5d} {r['objects']:4d} "
                f"{r['best_iou_top20']:10.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
