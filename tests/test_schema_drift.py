"""The config schema, the stage option dataclasses and config/README.md agree."""

import dataclasses
from pathlib import Path

import pytest

from oln.affinity.evaluate import PAEvalOptions
from oln.affinity.train import PATrainOptions
from oln.config import ConfigError, options_from_dict, validate_config
from oln.config_doc import render
from oln.data.synthetic import SyntheticOptions
from oln.detector.predict import PredictOptions
from oln.detector.train import DetectorTrainOptions
from oln.evaluation.recall import EvaluateOptions
from oln.pseudo.extract import ExtractOptions
from oln.pseudo.merge import MergeOptions
from oln.report import ReportOptions

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_ONLY = {"extract": {"sources", "num_shards", "proposals_top_k"}}
SECTIONS = {
    "synthetic": SyntheticOptions, "pa_train": PATrainOptions, "pa_eval": PAEvalOptions,
    "extract": ExtractOptions, "merge": MergeOptions, "predict": PredictOptions,
    "evaluate": EvaluateOptions, "report": ReportOptions,
}


def plain(value):
    """Dataclass instances and tuples as the JSON-like values a YAML config holds."""
    if dataclasses.is_dataclass(value):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_schema_defaults_equal_dataclass_defaults(name):
    defaults = validate_config({})[name]
    for key in WORKFLOW_ONLY.get(name, ()):
        defaults.pop(key)
    assert defaults == plain(SECTIONS[name]())
    options_from_dict(SECTIONS[name], defaults, name)  # and they load back


def test_detector_defaults_equal_dataclass_defaults():
    defaults = validate_config({})["detector"]["defaults"]
    assert defaults.pop("pseudo") is False
    assert defaults == plain(DetectorTrainOptions())


def test_detector_run_keys_are_checked():
    with pytest.raises(ConfigError, match=r"detector\.runs\.ggn"):
        validate_config({"detector": {"runs": {"ggn": {"pseudo": True, "detectr": {}}}}})


def test_config_readme_is_generated_from_the_schema():
    assert (REPO / "config" / "README.md").read_text() == render(), (
        "config/README.md is stale: run `python -m oln.config_doc > config/README.md`")
