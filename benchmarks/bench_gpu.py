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
import dataclasses
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from gpu_bench.common import (
    MIN_PART_SECONDS,
    PARTS,
    BenchConfig,
    Budget,
    Context,
    environment,
    free_memory,
    full_config,
    print_row,
    smoke_config,
)
from gpu_bench.dag import bench_dag
from gpu_bench.evaluation import bench_evaluate
from gpu_bench.extraction import bench_extract, extract_worker_main
from gpu_bench.prediction import bench_predict
from gpu_bench.training import bench_detector_train, bench_pa_train

from oln.io import write_json

# ----------------------------------------------------------------------------- driver

BENCHES: dict[str, Callable[[Context], list[dict]]] = {
    "pa_train": bench_pa_train, "detector_train": bench_detector_train, "predict": bench_predict,
    "extract": bench_extract, "evaluate": bench_evaluate, "dag": bench_dag,
}
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
