"""What re-runs a stage: the code hash of its imports, its tracked settings, a folder's file list;
and what keeps a killed training's checkpoints."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from oln.checkpoints import reset_stale_checkpoints
from oln.code_hash import PACKAGE_DIR, imported_modules, module_imports, stage_code_hash
from oln.config import extract_settings, tracked_settings, validate_config
from oln.data.folders import folder_fingerprint


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the `oln` sources to edit."""
    dest = tmp_path / "oln"
    shutil.copytree(PACKAGE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def append_comment(path: Path) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n# edited\n")


def test_lazy_imports_and_package_inits_count():
    train = imported_modules(["oln.commands.train_pa"])
    assert "oln.affinity.train" in module_imports("oln.commands.train_pa")  # imported inside the handler
    assert {"oln", "oln.affinity", "oln.engine", "oln.config"} <= train
    assert not train & {"oln.cli", "oln.report", "oln.evaluation.recall", "oln.detector.model"}


def test_relative_imports_are_resolved(tmp_path):
    pkg = tmp_path / "oln"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("")
    assert module_imports("oln.sub", pkg) == {"oln.sub.leaf"}
    assert module_imports("oln.sub.leaf", pkg) == {"oln.top"}


def test_editing_an_indirect_import_changes_only_the_stages_that_run_it(package):
    before = {cmd: stage_code_hash([f"oln.commands.{cmd}"], package) for cmd in ("evaluate", "train_pa", "report")}
    append_comment(package / "evaluation" / "matching.py")  # evaluate -> evaluation.run -> recall -> matching
    after = {cmd: stage_code_hash([f"oln.commands.{cmd}"], package) for cmd in before}
    assert after["evaluate"] != before["evaluate"]
    assert after["train_pa"] == before["train_pa"] and after["report"] == before["report"]


def test_the_config_schema_counts_for_every_stage(package):
    before = stage_code_hash(["oln.commands.synthesize"], package)
    append_comment(package / "config.schema.yaml")
    assert stage_code_hash(["oln.commands.synthesize"], package) != before


def test_killed_training_keeps_checkpoints_unless_code_it_runs_changed(package, tmp_path):
    entry = ["oln.commands.train_pa"]
    modules = imported_modules(entry, package)
    assert "oln.report" not in modules and "oln.engine" in modules
    out, settings = tmp_path / "pa", {"options": {"lr": 0.01}}
    assert not reset_stale_checkpoints(out, settings, stage_code_hash(entry, package))
    (out / "checkpoints" / "last.pt").write_bytes(b"weights")  # the training is killed here

    append_comment(package / "report.py")  # not imported by training
    assert not reset_stale_checkpoints(out, settings, stage_code_hash(entry, package))
    assert (out / "checkpoints" / "last.pt").exists()

    append_comment(package / "engine.py")  # the training loop
    assert reset_stale_checkpoints(out, settings, stage_code_hash(entry, package))
    assert not (out / "checkpoints" / "last.pt").exists()


def test_other_settings_reset_checkpoints(tmp_path):
    reset_stale_checkpoints(tmp_path, {"lr": 0.01}, "code")
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"weights")
    assert not reset_stale_checkpoints(tmp_path, {"lr": 0.01}, "code")
    assert reset_stale_checkpoints(tmp_path, {"lr": 0.02}, "code")


def test_tracked_settings_leave_out_worker_counts():
    config = validate_config({})
    for section in ("extract", "predict", "evaluate"):
        assert "num_workers" in config[section] and "num_workers" not in tracked_settings(section, config[section])
    assert tracked_settings("merge", config["merge"]) == config["merge"]


def test_each_extraction_reads_its_own_budget():
    extract = validate_config({"extract": {"top_k": 7, "proposals_top_k": 300}})["extract"]
    shards, proposals = extract_settings(extract), extract_settings(extract, proposals=True)
    assert shards["top_k"] == 7 and "proposals_top_k" not in shards
    assert proposals["proposals_top_k"] == 300 and "top_k" not in proposals
    assert not {"sources", "num_shards"} & (set(shards) | set(proposals))
    # idempotent: the command re-reads the section the rule passed (defaults filled back in)
    assert extract_settings(validate_config({"extract": proposals})["extract"], proposals=True) == proposals


def test_folder_fingerprint_follows_the_image_list(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"a")
    (tmp_path / "notes.txt").write_text("not an image")
    first = folder_fingerprint(tmp_path)
    (tmp_path / "notes.txt").write_text("still not an image")
    assert folder_fingerprint(tmp_path) == first
    (tmp_path / "b.jpg").write_bytes(b"b")
    added = folder_fingerprint(tmp_path)
    assert added != first
    os.utime(tmp_path / "b.jpg", ns=(0, 0))
    assert folder_fingerprint(tmp_path) != added
    (tmp_path / "b.jpg").unlink()
    assert folder_fingerprint(tmp_path) == first
    assert folder_fingerprint(tmp_path / "missing") == folder_fingerprint(tmp_path / "sub" / "empty")


def test_training_json_rewritten_at_the_same_path_resets_checkpoints(tmp_path, caplog):
    """merge_pseudo re-run with other settings rewrites pseudo/train.json in place: the
    detector must train again from scratch, not resume the finished checkpoint."""
    import json
    import logging

    import numpy as np
    from PIL import Image

    from oln.cli import main
    from oln.io import read_json, write_json

    images, annotations = [], []
    for image_id in (1, 2):
        pixels = np.full((64, 64, 3), 40, np.uint8)
        pixels[8:40, 10:42] = 200
        Image.fromarray(pixels).save(tmp_path / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "height": 64, "width": 64})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [10, 8, 32, 32],
                            "area": 1024, "iscrowd": 0, "segmentation": [[10, 8, 42, 8, 42, 40, 10, 40]]})
    train_json = tmp_path / "train.json"
    write_json(train_json, {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "a"}]})
    run = {"pseudo": False,
           "detector": {"backbone": "resnet18_w16", "min_size": 64, "max_size": 64, "fpn_channels": 16,
                        "box_head_dim": 32, "mask_head_channels": 8, "rois_per_image": 16,
                        "anchor_sizes": [8, 16, 32, 64, 128]},
           "train": {"iterations": 1, "batch_size": 2, "warmup_iters": 0, "checkpoint_every": 1, "log_every": 1}}
    argv = ["train-detector", "--params", json.dumps(run), "--train-json", str(train_json), "--image-root",
            str(tmp_path), "--out-dir", str(tmp_path / "det"), "--seen", "[1]", "--device", "cpu"]

    def train() -> str:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main(argv) == 0
        return caplog.text

    first = train()
    assert "removed checkpoints" not in first and "resuming from" not in first
    assert "resuming from" in train()  # same json: the finished checkpoint is resumed
    data = read_json(train_json)
    data["annotations"][1]["bbox"] = [12, 8, 30, 32]  # the same path, other content
    write_json(train_json, data)
    rewritten = train()
    assert "removed checkpoints of other settings" in rewritten and "resuming from" not in rewritten
