"""Speed / memory / quality benchmark of oln.grouping.affinity_to_proposals.

Seeded synthetic affinity maps (random ellipses and polygons on a textured
background; affinity low on object boundaries, blurred, light noise) at three
sizes, each grouping setting run in its own subprocess so peak memory is per case.

Usage:
    PYTHONPATH=. python3 benchmarks/bench_grouping.py [--sizes 128x128 320x480 800x1216] [--exact]
        [--repeat N] [--seeds 0 1 2] [--cache DIR] [--ggn-cache DIR] [--per-map]

Columns: seconds (fastest of `--repeat` untraced calls, after a warm-up call on a small map;
the minimum is robust to other processes sharing the cores) and the CPU seconds (user + system)
of that call, peak RSS of the process and its growth during the call (MB), tracemalloc peak of
numpy/Python allocations during a second, traced call (MB), proposals returned, the mean over true
objects of the best IoU among the top 20 proposals, and `vs exact`: the share of the exact
setting's top-20 proposals (same options, spectral step by shift-invert Lanczos on the pixel graph)
that have a counterpart at IoU >= 0.95 among this setting's top 20, averaged over the maps of
`--seeds` (seconds, memory and best IoU are of the first map). Settings without globalisation are
their own exact setting ("-"). The exact proposals are computed once per map (minutes and ~2 GB at
800x1216) and cached in `--cache`.

`vs GGN`: the same match rate against GGN's own top-20 proposals (its released extraction: setting
`full` for the orientation + globalisation settings, `fast` for `fast`; `orientation` has no GGN
counterpart, "-"), averaged over the maps of `--seeds` that have a GGN file in `--ggn-cache`
(default: `--cache`), `maps` of them. This repository contains no GGN code: the files
`<HxW>_seed<k>_ggn_<full|fast>.npz` are written by benchmarks/ggn_reference.py from a GGN checkout.
Without them the column is "-". `--per-map` also prints the rate of each map, and their minimum.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np

SETTINGS = {
    "fast": dict(orientation=False, globalization=0.0),
    "orientation": dict(orientation=True, globalization=0.0),
    "orient+global": dict(orientation=True, globalization=0.5),  # spectral_solver: multilevel
    "orient+global pooled": dict(orientation=True, globalization=0.5, spectral_solver="pooled"),
    "orient+global exact": dict(orientation=True, globalization=0.5, spectral_solver="shift_invert"),
}
TOP = 20
MATCH_IOU = 0.95


def exact_setting(setting: str) -> str | None:
    """The setting whose proposals `setting` is compared with (None: it is exact itself)."""
    params = SETTINGS[setting]
    if params.get("globalization", 0.5) == 0 or params.get("spectral_solver") == "shift_invert":
        return None
    return "orient+global exact"


def match_rate(reference: np.ndarray, candidate: np.ndarray, iou: float = MATCH_IOU) -> float:
    """Share of `reference` masks with a `candidate` mask of IoU >= `iou`."""
    if len(reference) == 0:
        return 1.0
    if len(candidate) == 0:
        return 0.0
    ref = reference.reshape(len(reference), -1).astype(np.float32)
    cand = candidate.reshape(len(candidate), -1).astype(np.float32)
    inter = ref @ cand.T
    union = ref.sum(1)[:, None] + cand.sum(1)[None] - inter
    return float(((inter / np.maximum(union, 1)).max(1) >= iou).mean())


def ggn_setting(setting: str) -> str | None:
    """The GGN extraction setting `setting` is compared with (None: no GGN counterpart)."""
    params = SETTINGS[setting]
    if not params.get("orientation", True) and params.get("globalization", 0.5) == 0:
        return "fast"
    if params.get("orientation", True) and params.get("globalization", 0.5) > 0:
        return "full"
    return None


def ggn_path(cache: str, size: str, setting: str, seed: int) -> Path:
    return Path(cache) / f"{size}_seed{seed}_ggn_{setting}.npz"


def reference_path(cache: str, size: str, setting: str, seed: int) -> Path:
    return Path(cache) / f"{size}_seed{seed}_{setting.replace(' ', '_').replace('+', '_')}.npz"


def make_reference(size: str, setting: str, seed: int, cache: str) -> None:
    """Compute and cache the top-20 proposals of `setting` on map `seed` (if not cached yet)."""
    from oln.grouping import affinity_to_proposals

    path = reference_path(cache, size, setting, seed)
    if path.exists():
        return
    height, width = (int(v) for v in size.split("x"))
    affinity, _ = synthetic_affinity(height, width, seed)
    masks, _ = affinity_to_proposals(affinity, max_proposals=TOP, **SETTINGS[setting])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, masks=np.packbits(masks, axis=-1), shape=np.array(masks.shape))


def load_reference(size: str, setting: str, seed: int, cache: str) -> np.ndarray:
    data = np.load(reference_path(cache, size, setting, seed))
    shape = tuple(data["shape"])
    return np.unpackbits(data["masks"], axis=-1, count=shape[-1]).astype(bool).reshape(shape)


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


def run_case(
    size: str, setting: str, repeat: int = 1, seeds: tuple[int, ...] = (0,), cache: str = "", ggn_cache: str = ""
) -> dict:
    """Run one case in this process and return its measurements."""
    from oln.grouping import affinity_to_proposals

    height, width = (int(v) for v in size.split("x"))
    affinity, objects = synthetic_affinity(height, width, seeds[0])
    warm, _ = synthetic_affinity(64, 64, seed=1)
    affinity_to_proposals(warm, **SETTINGS[setting])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = cpu = float("inf")
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), os.times()
        masks, scores = affinity_to_proposals(affinity, **SETTINGS[setting])
        end_cpu = os.times()
        if time.perf_counter() - start < seconds:
            seconds = time.perf_counter() - start
            cpu = end_cpu.user + end_cpu.system - start_cpu.user - start_cpu.system
        del masks, scores
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tracemalloc.start()  # second, traced call (tracemalloc slows the first one down)
    masks, scores = affinity_to_proposals(affinity, **SETTINGS[setting])
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    matches, ggn_matches = [], {}
    reference, ggn = exact_setting(setting), ggn_setting(setting)
    for seed in seeds:
        ggn_file = ggn_path(ggn_cache or cache, size, ggn, seed) if ggn else None
        ggn_file = ggn_file if ggn_file and ggn_file.exists() else None
        if not reference and not ggn_file:
            continue
        found = masks
        if seed != seeds[0]:
            found, _ = affinity_to_proposals(synthetic_affinity(height, width, seed)[0], **SETTINGS[setting])
        if reference:
            matches.append(match_rate(load_reference(size, reference, seed, cache), found[:TOP]))
        if ggn_file:
            ggn_matches[seed] = match_rate(np.load(ggn_file)["masks"].astype(bool)[:TOP], found[:TOP])
    return dict(
        size=size,
        setting=setting,
        seconds=seconds,
        cpu_seconds=cpu,
        rss_peak_mb=rss_peak,
        rss_growth_mb=rss_peak - rss_before,
        traced_peak_mb=traced_peak / 2**20,
        proposals=len(masks),
        objects=len(objects),
        best_iou_top20=mean_best_iou(masks, objects),
        match_exact=float(np.mean(matches)) if matches else None,
        match_ggn=float(np.mean(list(ggn_matches.values()))) if ggn_matches else None,
        ggn_maps=len(ggn_matches),
        ggn_per_map=ggn_matches,
    )


def _subprocess(args: list[str]) -> str:
    env = {
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": ".",
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env).stdout


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", nargs="+", default=["128x128", "320x480", "800x1216"])
    parser.add_argument(
        "--settings", nargs="+", default=["fast", "orientation", "orient+global", "orient+global pooled"]
    )
    parser.add_argument("--exact", action="store_true", help="also time the exact setting (not at 800x1216)")
    parser.add_argument("--repeat", type=int, default=1, help="timed calls per case; the fastest is reported")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="maps for the `vs exact` column")
    parser.add_argument("--cache", default="results/bench_grouping", help="folder of cached exact proposals")
    parser.add_argument("--ggn-cache", help="folder of GGN's proposals (ggn_reference.py); default: --cache")
    parser.add_argument("--per-map", action="store_true", help="also print the `vs GGN` rate of each map")
    parser.add_argument("--case", nargs=2, metavar=("SIZE", "SETTING"), help=argparse.SUPPRESS)
    parser.add_argument("--make-reference", nargs=3, metavar=("SIZE", "SETTING", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    ggn_cache = args.ggn_cache or args.cache
    if args.make_reference:
        size, setting, seed = args.make_reference
        make_reference(size, setting, int(seed), args.cache)
        return
    if args.case:
        print(json.dumps(run_case(*args.case, repeat=args.repeat, seeds=tuple(args.seeds), cache=args.cache,
                                  ggn_cache=ggn_cache)))
        return
    settings = list(args.settings) + (["orient+global exact"] if args.exact else [])
    print(
        f"{'size':>9} {'setting':>20} {'s':>6} {'cpu s':>6} {'rss MB':>7} {'+rss MB':>8} {'traced MB':>9} "
        f"{'props':>5} {'objs':>4} {'bestIoU@20':>10} {'vs exact':>8} {'vs GGN':>6} {'maps':>4}"
    )
    per_map = []
    for size in args.sizes:
        for setting in settings:
            if setting.endswith("exact") and size == "800x1216":
                continue
            reference = exact_setting(setting)
            for seed in args.seeds if reference else ():
                _subprocess(["--make-reference", size, reference, str(seed), "--cache", args.cache])
            out = _subprocess(
                ["--case", size, setting, "--repeat", str(args.repeat), "--cache", args.cache]
                + ["--ggn-cache", ggn_cache, "--seeds"]
                + [str(seed) for seed in args.seeds]
            )
            r = json.loads(out.strip().splitlines()[-1])
            match = "-" if r["match_exact"] is None else f"{r['match_exact']:.3f}"
            ggn = "-" if r["match_ggn"] is None else f"{r['match_ggn']:.3f}"
            if r["ggn_per_map"]:
                per_map.append((size, setting, {int(k): v for k, v in r["ggn_per_map"].items()}))
            print(
                f"{r['size']:>9} {r['setting']:>20} {r['seconds']:6.2f} {r['cpu_seconds']:6.2f} "
                f"{r['rss_peak_mb']:7.0f} {r['rss_growth_mb']:8.0f} {r['traced_peak_mb']:9.0f} {r['proposals']:5d} "
                f"{r['objects']:4d} {r['best_iou_top20']:10.3f} {match:>8} {ggn:>6} {r['ggn_maps']:4d}",
                flush=True,
            )
    if args.per_map and not per_map:
        print(f"\nvs GGN per map: no GGN files in {ggn_cache} for these sizes and seeds")
    if args.per_map and per_map:
        print(f"\nvs GGN per map (share of GGN's top {TOP} matched at IoU >= {MATCH_IOU})")
        print(f"{'size':>9} {'setting':>20} " + " ".join(f"{f'seed{k}':>6}" for k in args.seeds) + f" {'min':>6}")
        for size, setting, rates in per_map:
            cells = " ".join(f"{rates[k]:6.3f}" if k in rates else f"{'-':>6}" for k in args.seeds)
            print(f"{size:>9} {setting:>20} {cells} {min(rates.values()):6.3f}")


if __name__ == "__main__":
    main()
