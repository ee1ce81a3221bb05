"""Render the config schema as the key-by-key reference in config/README.md.

`python -m oln.config_doc > config/README.md` regenerates it; a test checks the
committed file is current, so the reference never drifts from the schema.
"""

from __future__ import annotations

import json

from oln.config import load_schema

HEADER = """# Configuration reference

Generated from `workflow/schemas/config.schema.yaml` by `python -m oln.config_doc > config/README.md`;
do not edit by hand. Every key has a default, so a config file names only what it changes
(`config/config.yaml` is the embedded synthetic experiment, `config/tiny.yaml` the CI-sized one,
`config/coco_voc_to_nonvoc.yaml` the paper's main setting). Each top-level section is passed to its
stage as Snakemake `params:`, so editing a section re-runs exactly that stage and its dependants.
Validation errors name the key, e.g. `synthetic.num_train must be >= 1`.

| key | type | default | description |
|---|---|---|---|
"""


def _type_of(schema: dict) -> str:
    if "enum" in schema:
        return " \\| ".join(json.dumps(v) for v in schema["enum"])
    kind = schema.get("type", "object" if "properties" in schema else "any")
    kind = "/".join(kind) if isinstance(kind, list) else kind
    bounds = []
    for word, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if word in schema:
            bounds.append(f"{sign} {schema[word]}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _rows(schema: dict, prefix: str = "") -> list[str]:
    rows = []
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        nested = "properties" in sub
        default = "" if nested else json.dumps(sub.get("default", None)) if "default" in sub else "(required)"
        description = " ".join(str(sub.get("description", "")).split())
        rows.append(f"| `{key}` | {_type_of(sub)} | {default.replace('|', '/')} | {description.replace('|', '/')} |")
        if nested:
            rows += _rows(sub, key + ".")
        elif isinstance(sub.get("additionalProperties"), dict) and "properties" in sub["additionalProperties"]:
            rows += _rows(sub["additionalProperties"], key + ".<name>.")
    return rows


def render() -> str:
    """The markdown reference of every config key."""
    return HEADER + "\n".join(_rows(load_schema())) + "\n"


if __name__ == "__main__":
    print(render(), end="")
