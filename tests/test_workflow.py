"""End to end: the tiny config through the whole Snakemake DAG on CPU, then re-run scope.

One module-scoped run of `snakemake --cores 2 --configfile config/tiny.yaml` in a
copy of the repository; the tests check every output against its contract and
that editing a setting, or a module a stage imports, re-runs exactly that stage and its
dependants (dry runs), and that settings which never change outputs re-run nothing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXP = "results/tiny"
RUNS = ("baseline", "ggn", "faster_rcnn", "oln", "ggn_oln", "two_tower")
MASK_RUNS = ("baseline", "ggn", "oln", "ggn_oln", "two_tower")
PSEUDO_RUNS = ("ggn", "ggn_oln", "two_tower")
EVALS = (*RUNS, "pa_proposals")

pytestmark = pytest.mark.slow


def copy_workflow(dest: Path) -> Path:
    """The files Snakemake needs (Snakefile, workflow/, config/, envs/, oln/) copied to `dest`."""
    for name in ("Snakefile", "workflow", "config", "envs", "oln"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "--cores", "2", *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny"))
    done = snakemake(workdir, "--configfile", "config/tiny.yaml")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return workdir


def test_every_output_exists_and_is_not_empty(tiny):
    exp = tiny / EXP
    expected = [
        "data/train.json", "data/val.json", "data/unlabeled.json", "data/summary.json", "data/preview.png",
        "pa/model.pt", "pa/log.jsonl", "pa/curve.png", "pa/metrics.json", "pa/grid.png",
        "pseudo/train.json", "pseudo/stats.json", "pseudo/gallery.png", "pseudo/val_proposals.json",
        "summary.csv", "summary.md", "plots/ar_curves.png", "plots/training_curves.png",
        "plots/baseline_vs_ggn.png",
    ]
    expected += [f"pseudo/{src}/shard-{i}-of-2.json" for src in ("train", "unlabeled") for i in range(2)]
    expected += [f"detector/{run}/{name}" for run in RUNS for name in ("model.pt", "log.jsonl", "curve.png",
                                                                         "predictions.json")]
    expected += [f"eval/{name}.json" for name in EVALS]
    missing = [p for p in expected if not (exp / p).is_file() or (exp / p).stat().st_size == 0]
    assert not missing
    for log in (tiny / EXP / "logs").rglob("*.log"):
        assert "Traceback" not in log.read_text(), log


def test_evaluation_jsons_follow_the_contract(tiny):
    keys = {f"AR@{k}" for k in (1, 10, 20, 30, 50, 100, 300, 500, 1000, 1500)}
    keys |= {"AR_s@100", "AR_m@100", "AR_l@100", "AR@100_iou50", "AR@100_iou75", "AUC", "iou_type", "protocol",
             "seen_category_ids", "num_images", "num_gt", "num_detections"}
    for name in EVALS:
        evaluation = json.loads((tiny / EXP / "eval" / f"{name}.json").read_text())
        iou_types = {"bbox"} if name == "faster_rcnn" else {"bbox", "segm"}
        assert iou_types <= set(evaluation), name
        for iou_type in iou_types:
            metrics = evaluation[iou_type]
            assert keys <= set(metrics), (name, keys - set(metrics))
            # AR_s/m/l are None when no GT falls in that COCO area range (64-px images: no large objects)
            values = [metrics[k] for k in keys if k.startswith("AR") or k == "AUC"]
            assert all(v is None or 0.0 <= v <= 1.0 for v in values)
            assert metrics["AR@100"] is not None and metrics["AUC"] is not None
            assert metrics["num_images"] == 6
            assert metrics["seen_category_ids"] == list(range(1, 7))


def test_predictions_and_pseudo_records_follow_the_contract(tiny):
    exp = tiny / EXP
    val_ids = {im["id"] for im in json.loads((exp / "data/val.json").read_text())["images"]}
    for run in RUNS:
        records = json.loads((exp / "detector" / run / "predictions.json").read_text())
        assert records and {r["image_id"] for r in records} <= val_ids
        for r in records[:50]:
            assert r["category_id"] == 1 and len(r["bbox"]) == 4 and 0 <= r["score"]
            assert ("segmentation" in r) == (run in MASK_RUNS)
            if "segmentation" in r:
                assert isinstance(r["segmentation"]["counts"], str)
    shard = json.loads((exp / "pseudo/train/shard-0-of-2.json").read_text())
    for r in shard["records"]:
        assert {"image_id", "segmentation", "bbox", "area", "score", "rank", "gt_iou", "source"} <= set(r)
        assert r["source"] == "train" and 0.0 <= r["gt_iou"] <= 1.0
    unlabeled = json.loads((exp / "pseudo/unlabeled/shard-1-of-2.json").read_text())
    assert all(r["gt_iou"] == 0 for r in unlabeled["records"])
    merged = json.loads((exp / "pseudo/train.json").read_text())
    pseudo = [a for a in merged["annotations"] if a.get("pseudo")]
    gt = [a for a in merged["annotations"] if not a.get("pseudo")]
    assert pseudo and gt and all(a["category_id"] <= 6 for a in gt)  # seen GT only
    assert len({a["id"] for a in merged["annotations"]}) == len(merged["annotations"])


def test_summary_lists_every_evaluation(tiny):
    text = (tiny / EXP / "summary.csv").read_text().splitlines()
    assert text[0].startswith("run,protocol,box AR@10,box AR@30,box AR@100")
    assert {line.split(",")[0] for line in text[1:]} == set(EVALS)


def test_snakemake_report(tiny):
    done = snakemake(tiny, "--configfile", "config/tiny.yaml", "--report", "report.zip", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tiny / "report.zip").stat().st_size > 10_000


def edited_config(workdir: Path, edits: dict, name: str = "edited") -> str:
    """The tiny config with dotted-key `edits` applied, written as config/<name>.yaml."""
    config = yaml.safe_load((workdir / "config/tiny.yaml").read_text())
    for dotted, value in edits.items():
        *parents, last = dotted.split(".")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    (workdir / f"config/{name}.yaml").write_text(yaml.safe_dump(config))
    return f"config/{name}.yaml"


def planned_jobs(workdir: Path, edits: dict, *targets: str, name: str = "edited") -> dict[str, int]:
    """Jobs `snakemake -n` plans (for `targets`, default all) after dotted-key `edits` to the tiny config."""
    done = snakemake(workdir, "-n", *targets, "--configfile", edited_config(workdir, edits, name), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    table = done.stdout.split("Job stats:")[-1] if "Job stats:" in done.stdout else ""
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))
    return {name: int(count) for name, count in jobs.items() if name != "total"}


PER_RUN = {"train_detector": 1, "predict": 1, "evaluate": 1}
PSEUDO_DOWNSTREAM = {"train_detector": 3, "predict": 3, "evaluate": 3}  # ggn, ggn_oln, two_tower (grouping: ggn)
SHARDS = 4


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        ({"report.comparison_top_k": 5}, {"report": 1}),
        ({"evaluate.seen_removal": "rematch"}, {"evaluate": len(EVALS), "report": 1}),
        ({"predict.batch_size": 1}, {"predict": len(RUNS), "evaluate": len(EVALS) - 1, "report": 1}),
        ({"detector.runs.baseline.train.lr": 0.03}, {**PER_RUN, "report": 1}),
        # the ranker run's model re-ranks the pseudo masks: merge and every pseudo-GT run follow it
        ({"detector.runs.oln.train.lr": 0.03}, {"train_detector": 4, "predict": 4, "evaluate": 4, "merge_pseudo": 1,
                                               "report": 1}),
        ({"merge.top_k": 2}, {"merge_pseudo": 1, **PSEUDO_DOWNSTREAM, "report": 1}),
        ({"extract.top_k": 10}, {"extract_pseudo": SHARDS, "merge_pseudo": 1, **PSEUDO_DOWNSTREAM, "report": 1}),
        ({"extract.proposals_top_k": 50}, {"pa_proposals": 1, "evaluate": 1, "report": 1}),
        ({"extract.num_workers": 2}, {}),
        ({"predict.num_workers": 1}, {}),
        ({"evaluate.num_workers": 2}, {}),
        ({"pa_eval.grid_images": 1}, {"eval_pa": 1, "report": 1}),
        ({"pa_train.train.lr": 0.0031}, {"train_pa": 1, "eval_pa": 1, "extract_pseudo": SHARDS, "merge_pseudo": 1,
                                        "pa_proposals": 1, "train_detector": 3, "predict": 3, "evaluate": 4,
                                        "report": 1}),
    ],
    ids=["report", "evaluate", "predict", "detector_run", "ranker_run", "merge", "extract", "pa_proposals",
         "extract_workers", "predict_workers", "evaluate_workers", "pa_eval", "pa_train"],
)
def test_editing_a_section_reruns_exactly_its_stage_and_dependants(tiny, edits, expected):
    # record_config rewrites results/<experiment>/config.yaml whenever the config changes
    assert planned_jobs(tiny, edits) == {**expected, "record_config": 1, "all": 1}


def test_unchanged_config_plans_nothing(tiny):
    assert planned_jobs(tiny, {}) == {}


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        # evaluate -> oln.evaluation.run -> recall -> matching (run by evaluate alone)
        ("evaluation/matching.py", {"evaluate": len(EVALS), "report": 1}),
        # extract -> oln.pseudo.extract -> oln.grouping -> proposals -> ranking (merge imports oln.pseudo too)
        ("grouping/ranking.py", {"extract_pseudo": SHARDS, "merge_pseudo": 1, "pa_proposals": 1,
                                 "train_detector": 3, "predict": 3, "evaluate": 4, "report": 1}),
        ("config_doc.py", {}),  # no stage imports it
    ],
    ids=["evaluation_matching", "grouping_ranking", "unused_module"],
)
def test_editing_a_module_reruns_exactly_the_stages_that_import_it(tiny, module, expected):
    path = tiny / "oln" / module
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# edited\n")
        planned = planned_jobs(tiny, {})
    finally:
        path.write_bytes(original)
    assert planned == ({**expected, "all": 1} if expected else {})


def test_images_added_to_a_folder_source_reindex_it(tiny, tmp_path):
    folder = tmp_path / "extra"
    folder.mkdir()
    png = sorted((tiny / EXP / "data/images").rglob("*.png"))
    assert png, "the tiny run wrote no PNG images"
    for i, image in zip(range(2), png):
        shutil.copy2(image, folder / f"{i}.png")
    edits = {"extract.sources": ["train", "unlabeled", {"name": "extra", "folder": str(folder)}]}
    target = f"{EXP}/data/sources/extra.json"
    done = snakemake(tiny, target, "--configfile", edited_config(tiny, edits, "folder"), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert planned_jobs(tiny, edits, target, name="folder") == {}
    shutil.copy2(next(folder.glob("*.png")), folder / "2.png")
    assert planned_jobs(tiny, edits, target, name="folder") == {"index_folder": 1}
    (folder / "2.png").unlink()
    assert planned_jobs(tiny, edits, target, name="folder") == {}
