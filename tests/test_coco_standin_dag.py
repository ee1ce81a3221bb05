"""The paper config (VOC -> non-VOC) through the whole DAG on the COCO-format stand-in.

`config/coco_voc_to_nonvoc.yaml` layered with `config/coco_standin.yaml` in a copy of the
repository, on data written by `oln make-coco-standin`: COCO's categories and ids, JPEGs of
varied sizes, images without VOC objects, an unlabeled folder of odd image modes. Every
architecture trains for a few iterations on the CPU; the tests check what the paper setting
must do differently from the demo.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import copy_workflow

pytestmark = pytest.mark.slow
EXP = "results/coco_standin"
CONFIGS = ("--configfile", "config/coco_voc_to_nonvoc.yaml", "config/coco_standin.yaml")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("standin"))
    made = subprocess.run(["oln", "make-coco-standin", "data/coco_standin"], cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, made.stderr[-3000:]
    done = subprocess.run(["snakemake", "--cores", "2", *CONFIGS], cwd=workdir, capture_output=True, text=True,
                          timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return workdir


def test_every_run_is_evaluated_with_the_published_protocol(standin):
    config = yaml.safe_load((standin / EXP / "config.yaml").read_text())
    runs = set(config["detector"]["runs"])
    assert {"baseline", "ggn", "two_tower", "faster_rcnn", "oln_box", "ggn_oln"} <= runs
    for name in [*runs, "pa_proposals"]:
        evaluation = json.loads((standin / EXP / "eval" / f"{name}.json").read_text())
        assert evaluation["bbox"]["protocol"] == "cross_category_seen_removed_oln", name
    summary = (standin / EXP / "summary.md").read_text()
    assert "cross_category_seen_removed_oln" in summary


def test_resolved_config_is_ggns_recipe(standin):
    config = yaml.safe_load((standin / EXP / "config.yaml").read_text())
    assert config["dataset"]["seen"] == "voc" and config["merge"]["top_k"] == 3
    assert config["extract"]["grouping"]["globalization"] == 0.5
    assert config["evaluate"]["seen_removal"] == "oln"
    provenance = json.loads((standin / EXP / "provenance.json").read_text())
    assert "coco_standin.yaml" in provenance["command_line"]


def test_images_without_voc_objects_are_filtered(standin):
    train = json.loads((standin / "data/coco_standin/annotations/instances_train2017.json").read_text())
    train_shards = sorted((standin / EXP / "pseudo/train").glob("shard-*.json"))
    extracted = sum(json.loads(p.read_text())["stats"]["num_images"] for p in train_shards)
    assert extracted == len(train["images"]) - 3  # two non-VOC-only images and one empty image dropped
    model = __import__("torch").load(standin / EXP / "detector/baseline/model.pt", weights_only=False)
    assert model["meta"]["num_training_images"] == len(train["images"]) - 3


def test_unlabeled_folder_with_odd_image_modes_is_used(standin):
    shards = sorted((standin / EXP / "pseudo/unlabeled").glob("shard-*.json"))
    stats = [json.loads(p.read_text())["stats"] for p in shards]
    assert sum(s["num_images"] for s in stats) >= 6 and sum(s["num_skipped"] for s in stats) == 0
    assert sum(s["num_proposals"] for s in stats) > 0


def test_multi_gpu_rules_ran_on_the_cpu_with_a_warning(standin):
    log = (standin / EXP / "logs/train_pa.log").read_text()
    assert "8 GPUs requested, this machine has no GPU" in log
