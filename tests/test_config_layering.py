"""A config file means what it says: the paper configs resolve to GGN's recipe, never to the demo's.

`snakemake --configfile X` must layer X over the schema defaults (which are GGN's and OLN's
recipe), not over config/config.yaml; the first rule writes the resolved config to
results/<experiment>/config.yaml.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from test_workflow import copy_workflow

from oln.config import validate_config

REPO = Path(__file__).resolve().parents[1]


def resolved_config(workdir: Path, experiment: str, *configfiles: str) -> dict:
    """Run only the record_config rule and read back results/<experiment>/config.yaml."""
    args = ["--configfile", *configfiles] if configfiles else []
    target = f"results/{experiment}/config.yaml"
    done = subprocess.run(["snakemake", "--cores", "1", target, *args], cwd=workdir, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return yaml.safe_load((workdir / target).read_text())


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("layering"))


def test_paper_config_is_the_file_over_the_schema_defaults(workdir):
    written = yaml.safe_load((REPO / "config/coco_voc_to_nonvoc.yaml").read_text())
    resolved = resolved_config(workdir, "coco_voc_to_nonvoc", "config/coco_voc_to_nonvoc.yaml")
    assert resolved == validate_config(written)
    # GGN's recipe, not the synthetic demo's settings
    assert resolved["extract"]["grouping"]["globalization"] == 0.5
    assert resolved["merge"]["top_k"] == 3
    assert resolved["evaluate"]["seen_removal"] == "oln"
    assert resolved["dataset"]["filter_empty_gt"] is True
    assert resolved["detector"]["defaults"]["train"]["grad_clip"] == 0.0
    assert resolved["pa_train"]["data"]["scale_range"] == [1.0, 1.0]
    assert resolved["pa_train"]["data"]["flip"] is False


def test_default_run_uses_the_embedded_demo(workdir):
    written = yaml.safe_load((REPO / "config/config.yaml").read_text())
    resolved = resolved_config(workdir, "synthetic")
    assert resolved == validate_config(written)
    assert resolved["extract"]["grouping"]["globalization"] == 0.0  # the demo's own choice
    provenance = (workdir / "results/synthetic/provenance.json").read_text()
    assert '"torch"' in provenance and '"command_line"' in provenance


def test_two_configfiles_layer_in_order(workdir, tmp_path):
    overlay = workdir / "config/overlay_test.yaml"
    overlay.write_text("experiment: layered\nmerge: {top_k: 7}\n")
    resolved = resolved_config(workdir, "layered", "config/coco_voc_to_nonvoc.yaml", "config/overlay_test.yaml")
    assert resolved["merge"]["top_k"] == 7
    assert resolved["dataset"]["seen"] == "voc"
    assert resolved["extract"]["grouping"]["globalization"] == 0.5


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ('detector={"runs": {"baseline": {"train": {"iterations": -5}}}}',
         "detector.runs.baseline.train.iterations must be >= 0"),
        ('detector={"runs": {"baseline": {"detector": {"fpn_chanels": 8}}}}',
         "detector.runs.baseline.detector: Additional properties are not allowed ('fpn_chanels'"),
        ('detector={"runs": {"ggn": {"train": {"checkpoint_every": 0}}}}',
         "detector.runs.ggn.train.checkpoint_every must be >= 1"),
        ('merge={"top_k": -2}', "merge.top_k must be >= 1"),
        ('detector={"runs": {"ggn": {"train": {"iterations": 0, "epochs": 0}}}}',
         "detector.runs.ggn.train: iterations is 0 and epochs is 0"),
    ],
    ids=["negative_iterations", "misspelled_key", "checkpoint_every_0", "negative_top_k", "no_schedule"],
)
def test_every_run_is_validated_when_the_dag_is_built(workdir, override, message):
    done = subprocess.run(["snakemake", "-n", "--config", override], cwd=workdir, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr


def test_nested_command_line_overrides_are_typed_against_the_schema(workdir):
    override = 'pa_train={"train": {"iterations": 5, "lr": 0.01}}'
    resolved = resolved_config(workdir, "synthetic", "config/config.yaml")  # the file alone first
    in_file = yaml.safe_load((workdir / "config/config.yaml").read_text())["pa_train"]["train"]["iterations"]
    assert resolved["pa_train"]["train"]["iterations"] == in_file != 5
    target = "results/synthetic/config.yaml"
    done = subprocess.run(["snakemake", "--cores", "1", target, "--config", override], cwd=workdir,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    train = yaml.safe_load((workdir / target).read_text())["pa_train"]["train"]
    assert train["iterations"] == 5 and train["lr"] == 0.01
    assert train["batch_size"] == 8  # the rest of the section is kept (merged, not replaced)


def test_coerce_strings_reads_yaml_only_where_the_schema_wants_another_type():
    from oln.config import coerce_config_strings

    coerced = coerce_config_strings({"experiment": "123", "pa_train": {"train": {"iterations": "5", "amp": "false"}},
                                     "detector": {"runs": {"ggn": {"train": {"lr": "0.1"}, "pseudo": "true"}}}})
    assert coerced["experiment"] == "123"  # a string where the schema wants one
    assert coerced["pa_train"]["train"] == {"iterations": 5, "amp": False}
    assert coerced["detector"]["runs"]["ggn"] == {"train": {"lr": 0.1}, "pseudo": True}
