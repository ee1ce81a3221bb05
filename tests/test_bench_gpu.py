"""Smoke run of benchmarks/bench_gpu.py: every part runs on the CPU at tiny sizes and reports figures.

One module-scoped run of `python benchmarks/bench_gpu.py --smoke --out <tmp>` (about 20 s on a
quiet core); the tests check the JSON report it writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ("pa_train", "detector_train", "predict", "extract", "evaluate", "dag")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench_gpu") / "bench.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_gpu.py", "--smoke", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.exists(), done.stdout[-4000:] + done.stderr[-4000:]
    return {**json.loads(out.read_text()), "returncode": done.returncode, "output": done.stdout[-3000:]}


def rows_of(report: dict, part: str) -> list[dict]:
    return report["parts"][part]["rows"]


def positive(row: dict, *keys: str) -> bool:
    return all(isinstance(row.get(k), int | float) and row[k] > 0 for k in keys)


def test_every_part_and_case_is_ok(report):
    assert report["smoke"] is True
    assert report["returncode"] == 0, report["output"]
    for part in PARTS:
        result = report["parts"][part]
        assert result["status"] == "ok", (part, result.get("error"))
        assert result["rows"], part
        assert all(row["status"] == "ok" for row in result["rows"]), (part, result["rows"])


def test_environment_is_recorded(report):
    env = report["environment"]
    for key in ("gpu", "torch", "torchvision", "cuda", "cpu_count", "device", "python"):
        assert key in env
    assert env["cpu_count"] >= 1
    assert report["total_s"] > 0


def test_training_throughput_figures(report):
    pa = rows_of(report, "pa_train")
    for precision in ("fp32", "bf16"):
        runs = [r for r in pa if r["precision"] == precision]
        assert {1, 2} <= {r["batch"] for r in runs}, precision
        assert any(r.get("largest_batch") for r in runs), precision
        assert all(positive(r, "images_per_s", "peak_mem_mb", "iter_s") for r in runs)
    detector = rows_of(report, "detector_train")
    assert {(r["arch"], r["precision"]) for r in detector} == {
        (arch, precision) for arch in ("mask_rcnn", "oln") for precision in ("fp32", "bf16")
    }
    assert all(positive(r, "images_per_s", "peak_mem_mb") for r in detector)


def test_prediction_and_extraction_figures(report):
    predict = {r["case"].split()[0]: r for r in rows_of(report, "predict")}
    assert set(predict) == {"predict", "forward"}
    assert all(positive(r, "images_per_s", "detections_per_image") for r in predict.values())
    extract = rows_of(report, "extract")
    workers = {r["workers"]: r for r in extract if "workers" in r}
    assert set(workers) == {1, 2}
    assert all(positive(r, "images_per_s", "images_per_s_incl_startup", "images") for r in workers.values())
    assert any(positive(r, "grouping_s_per_image") for r in extract)
    assert any(r["case"] == "PA inference alone" and positive(r, "images_per_s") for r in extract)


def test_evaluation_and_dag_figures(report):
    evaluate = {r["case"].split()[0]: r for r in rows_of(report, "evaluate")}
    assert set(evaluate) == {"bbox", "segm"}
    assert all(positive(r, "eval_s", "images_per_s", "num_detections") for r in evaluate.values())
    (dag,) = rows_of(report, "dag")
    assert dag["dry_run"] is True and positive(dag, "wall_s")
