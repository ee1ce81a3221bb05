"""Run GGN's released proposal extraction on bench_grouping's held-out synthetic maps.

A measurement tool only: it writes the reference masks that `bench_grouping.py --ggn-cache` compares
oln's proposals with. This repository contains no GGN code; the script imports GGN's `pa_lib` from a
checkout you supply. Set one up with:

    git clone https://github.com/facebookresearch/Generic-Grouping && cd Generic-Grouping
    pip install cython
    mkdir -p pa_lib/cython_lib/cython_lib && cd pa_lib/cython_lib && python setup.py build_ext --inplace

For each size, seed and setting the map `bench_grouping.synthetic_affinity(h, w, seed)` (float32 (H, W))
is passed as the 1-channel predicted affinity (1, H, W) to `pa_lib.evaluate_helper.generate_pa_proposals`
with the `pa_to_masks` values of GGN's configs/pairwise_affinity/pa_extract.py (the ranker-free path),
and the first 20 ranked masks are kept, as GGN's extraction script does.

Settings:
    full: pa_to_masks as released (orientation on, globalisation 0.5).
    fast: the same with use_orientation=0, use_globalization=0.0.

Output: <cache>/<HxW>_seed<k>_ggn_<setting>.npz with masks (bool (N<=20, H, W), ranked), scores,
seconds (wall time of generate_pa_proposals) and total (ranked masks before the top-20 cut). Each case
runs in its own subprocess (one BLAS/OpenMP thread) and is skipped past --timeout seconds (imports
included); cached cases are skipped unless --force.

Two run-time shims (`apply_shims`) let pa_lib, written for scikit-image <= 0.19, run on newer versions.

Usage:
    python benchmarks/ggn_reference.py --ggn-repo /path/to/Generic-Grouping [--sizes 128x128 320x480]
        [--seeds 0 1 2 3 4 5] [--settings full fast] [--cache results/bench_grouping] [--timeout 600] [--force]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_grouping import ggn_path  # the cache file names bench_grouping reads (this script's folder)

# `pa_to_masks` in GGN's configs/pairwise_affinity/pa_extract.py, less oln_ranker_path (None there)
PA_TO_MASKS: dict[str, object] = dict(
    edge_thresh=0.0, join_thresh=1.0, rank_method=3, nms=0.2, use_orientation=1, use_globalization=0.5,
    use_new_affinity=False, filter_by_edge_method=2, filter_by_edge_thresh=0.9, min_component_size=0,
)
SETTINGS = {"full": PA_TO_MASKS, "fast": dict(PA_TO_MASKS, use_orientation=0, use_globalization=0.0)}
TOP = 20


def apply_shims() -> None:
    """Let pa_lib run on scikit-image >= 0.20 without editing the checkout.

    `skimage.future.graph` (moved to `skimage.graph` in 0.20) is aliased; the `watershed` that
    pa_lib.affinity2mask calls casts float marker images (integral label ids) to int32, as
    scikit-image <= 0.19 did itself.
    """
    import numpy as np
    import skimage.future
    import skimage.graph
    import skimage.segmentation

    sys.modules.setdefault("skimage.future.graph", skimage.graph)
    skimage.future.graph = skimage.graph  # type: ignore[attr-defined]
    import pa_lib.affinity2mask as a2m

    watershed = skimage.segmentation.watershed

    def watershed_int_markers(image: np.ndarray, markers: object = None, *args: object, **kwargs: object) -> object:
        if isinstance(markers, np.ndarray) and markers.dtype.kind == "f":
            markers = markers.astype(np.int32)
        return watershed(image, markers, *args, **kwargs)

    a2m.watershed = watershed_int_markers


def run_one(repo: str, cache: str, size: str, seed: int, setting: str) -> dict[str, object]:
    """Extract one case with GGN's code and write its npz."""
    import numpy as np
    import torch

    sys.path.insert(0, str(Path(repo).resolve()))
    apply_shims()
    from bench_grouping import synthetic_affinity
    from pa_lib.evaluate_helper import generate_pa_proposals

    height, width = (int(v) for v in size.split("x"))
    affinity, _ = synthetic_affinity(height, width, seed)
    start = time.perf_counter()
    masks, scores = generate_pa_proposals(torch.from_numpy(affinity[None].copy()), **SETTINGS[setting])
    seconds = time.perf_counter() - start
    masks, scores = (masks, scores) if masks is not None else ([], [])
    total = len(masks)
    stacked = np.stack(masks[:TOP]).astype(bool) if total else np.zeros((0, height, width), bool)
    path = ggn_path(cache, size, setting, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as out:
        np.savez_compressed(out, masks=stacked, scores=np.asarray(scores[:TOP], float), seconds=seconds, total=total)
    partial.replace(path)
    return dict(seconds=seconds, total=total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ggn-repo", required=True, help="GGN checkout with pa_lib's Cython extension built")
    parser.add_argument("--sizes", nargs="+", default=["128x128", "320x480"])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(6)))
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--cache", default="results/bench_grouping")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per case, imports included")
    parser.add_argument("--force", action="store_true", help="recompute cached cases")
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "SEED", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.ggn_repo, args.cache, args.one[0], int(args.one[1]), args.one[2])))
        return
    if not (Path(args.ggn_repo) / "pa_lib" / "evaluate_helper.py").exists():
        parser.error(f"{args.ggn_repo} has no pa_lib/evaluate_helper.py (is it a GGN checkout?)")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for size in args.sizes:
        for setting in args.settings:
            for seed in args.seeds:
                case = f"{size} seed{seed} {setting}"
                if ggn_path(args.cache, size, setting, seed).exists() and not args.force:
                    print(f"{case}: cached", flush=True)
                    continue
                command = [sys.executable, __file__, "--ggn-repo", args.ggn_repo, "--cache", args.cache]
                command += ["--one", size, str(seed), setting]
                try:
                    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    print(f"{case}: skipped (over {args.timeout:.0f} s)", flush=True)
                    continue
                if out.returncode != 0:
                    print(f"{case}: failed (rc {out.returncode})\n{out.stderr[-2000:]}", flush=True)
                    continue
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{case}: {result['seconds']:.2f} s, {result['total']} masks", flush=True)


if __name__ == "__main__":
    main()
