"""Category splits and config validation."""

import pytest

from oln.config import ConfigError, load_config, options_from_dict, validate_config
from oln.data.splits import COCO_NAMES, NONVOC_NAMES, VOC_NAMES, complement, resolve_split

COCO_CATEGORIES = [{"id": i + 1 if i < 11 else i + 2, "name": n} for i, n in enumerate(COCO_NAMES)]


def test_voc_nonvoc_partition_coco():
    voc = resolve_split("voc", COCO_CATEGORIES)
    nonvoc = resolve_split("nonvoc", COCO_CATEGORIES)
    assert len(VOC_NAMES) == 20 and len(voc) == 20
    assert len(NONVOC_NAMES) == 60 and len(nonvoc) == 60
    assert not set(voc) & set(nonvoc)
    assert set(voc) | set(nonvoc) == {c["id"] for c in COCO_CATEGORIES}
    assert len(COCO_CATEGORIES) == 80
    assert resolve_split("person", COCO_CATEGORIES) == [1]
    assert len(resolve_split("nonperson", COCO_CATEGORIES)) == 79
    assert 12 not in resolve_split("all", COCO_CATEGORIES)  # ids follow the file, not positions
    assert complement(voc, COCO_CATEGORIES) == nonvoc


def test_synthetic_and_explicit_splits():
    cats = [{"id": 1, "name": "disc", "supercategory": "seen"},
            {"id": 2, "name": "ring", "supercategory": "unseen"},
            {"id": 3, "name": "star", "supercategory": "seen"}]
    assert resolve_split("seen", cats) == [1, 3]
    assert resolve_split("unseen", cats) == [2]
    assert resolve_split([3, 1], cats) == [1, 3]
    with pytest.raises(ValueError, match=r"\[7\]"):
        resolve_split([7], cats)
    with pytest.raises(ValueError, match="unknown category split 'vocc'"):
        resolve_split("vocc", cats)
    with pytest.raises(ValueError, match="person"):
        resolve_split("voc", cats)


def test_invalid_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"synthetic\.num_train must be >= 1"):
        validate_config({"synthetic": {"num_train": 0}})
    with pytest.raises(ConfigError, match=r"dataset\.kind must be one of"):
        validate_config({"dataset": {"kind": "imagenet"}})
    with pytest.raises(ConfigError, match=r"synthetic: .*'num_trian'"):
        validate_config({"synthetic": {"num_trian": 5}})
    path = tmp_path / "c.yaml"
    path.write_text("synthetic:\n  image_size: 8\n")
    with pytest.raises(ConfigError, match=r"(?s)c\.yaml.*synthetic\.image_size must be >= 32"):
        load_config(path)


def test_defaults_filled_and_overrides(tmp_path):
    config = validate_config({})
    assert config["experiment"] == "synthetic"
    assert config["synthetic"]["num_train"] == 400
    path = tmp_path / "c.yaml"
    path.write_text("experiment: tiny\n")
    config = load_config(path, {"synthetic.num_val": 3})
    assert config["experiment"] == "tiny" and config["synthetic"]["num_val"] == 3


def test_shipped_configs_are_valid():
    for name in ("config/config.yaml", "config/tiny.yaml", "config/coco_voc_to_nonvoc.yaml"):
        load_config(name)


def test_options_from_dict_unknown_key():
    from dataclasses import dataclass, field

    @dataclass
    class Inner:
        a: int = 1

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)
        b: tuple[int, ...] = (1,)

    opts = options_from_dict(Outer, {"inner": {"a": 5}, "b": [2, 3]}, "x")
    assert opts.inner.a == 5 and opts.b == (2, 3)
    with pytest.raises(ConfigError, match=r"x\.inner: unknown key\(s\) \['c'\]"):
        options_from_dict(Outer, {"inner": {"c": 1}}, "x")
