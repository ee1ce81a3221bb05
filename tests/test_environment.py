"""The reproducible install: pyproject's bounds, the constraints file and the conda env agree."""

import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "envs/constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def test_conda_env_pins_the_constraints():
    env = yaml.safe_load((REPO / "envs/oln.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pinned = dict(re.split(r"==", p, maxsplit=1) for p in pip)
    pins = constraints()
    assert {k.lower(): v for k, v in pinned.items()} == {k: v for k, v in pins.items() if k != "snakemake"}


def test_pyproject_bounds_admit_the_tested_versions():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = constraints()
    for text in project["dependencies"]:
        requirement = Requirement(text)
        version = pins.get(requirement.name.lower())
        assert version is not None, f"{requirement.name} is not in envs/constraints.txt"
        assert requirement.specifier.contains(version), (text, version)
