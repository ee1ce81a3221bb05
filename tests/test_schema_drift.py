"""The config schema, the stage option dataclasses and config/README.md agree."""

import dataclasses
from pathlib import Path

import pytest

from oln.affinity.evaluate import PAEvalOptions
from oln.affinity.model import NORMS
from oln.affinity.targets import REDUCTIONS
from oln.affinity.train import PATrainOptions
from oln.config import NON_OPTION_KEYS, ConfigError, load_schema, options_from_dict, validate_config
from oln.config_doc import render
from oln.data.synthetic import SyntheticOptions
from oln.detector.losses import BOX_LOSSES
from oln.detector.model import ARCHS, BACKBONE_NORMS
from oln.detector.predict import PredictOptions
from oln.detector.train import DetectorTrainOptions
from oln.evaluation.inputs import IOU_TYPES
from oln.evaluation.recall import SEEN_REMOVAL_RULES, EvaluateOptions
from oln.grouping.proposals import RANK_POTENTIALS
from oln.grouping.ranking import RANK_METHODS
from oln.pseudo.extract import ExtractOptions
from oln.pseudo.merge import MergeOptions
from oln.report import ReportOptions

REPO = Path(__file__).resolve().parents[1]
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
    for key in NON_OPTION_KEYS.get(name, ()):
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


# Choices the library defines (one place) and the schema repeats for validation and docs.
SCHEMA_ENUMS = {
    ("pa_train", "model", "norm"): NORMS,
    ("pa_train", "target", "reduction"): REDUCTIONS,
    ("extract", "grouping", "rank"): RANK_METHODS,
    ("extract", "grouping", "rank_potential"): RANK_POTENTIALS,
    ("detector", "defaults", "detector", "arch"): ARCHS,
    ("detector", "defaults", "detector", "backbone_norm"): BACKBONE_NORMS,
    ("detector", "defaults", "detector", "box_loss"): BOX_LOSSES,
    ("evaluate", "seen_removal"): SEEN_REMOVAL_RULES,
    ("evaluate", "iou_types", "items"): IOU_TYPES,
}


@pytest.mark.parametrize("path", sorted(SCHEMA_ENUMS), ids=".".join)
def test_schema_choices_equal_the_library_choices(path):
    node = load_schema()
    for key in path:
        node = node[key] if key == "items" else node["properties"][key]
    assert tuple(node["enum"]) == tuple(SCHEMA_ENUMS[path])


def test_config_readme_is_generated_from_the_schema():
    assert (REPO / "config" / "README.md").read_text() == render(), (
        "config/README.md is stale: run `python -m oln.config_doc > config/README.md`")
