"""Experiment configuration: YAML loading, schema validation with defaults, typed sections.

One JSON schema (`oln/config.schema.yaml`, also at
`workflow/schemas/config.schema.yaml`) documents every key and its default.
The Snakefile and the `oln` CLI both validate through `validate_config`, so an
invalid value fails the same way everywhere, with a message naming the key
(e.g. ``synthetic.num_train must be >= 1``). Stage code receives its section
as a typed dataclass via `options_from_dict`.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")
#: Keys of a section that are not fields of its stage's options dataclass: the workflow's
#: (image sources, shard count) and the budget of GGN's PA proposals (see `extract_settings`).
NON_OPTION_KEYS: dict[str, tuple[str, ...]] = {"extract": ("sources", "num_shards", "proposals_top_k"),
                                               "merge": ("ranker",)}
#: Keys that only set parallelism: a stage's outputs are the same for any value, so a rule
#: leaves them out of its tracked params (editing one re-runs nothing; see `tracked_settings`).
OUTPUT_NEUTRAL_KEYS: dict[str, tuple[str, ...]] = {
    "extract": ("num_workers",),  # grouping processes; images are written in order
    "predict": ("num_workers",),  # image-decoding processes; the loader keeps the order
    "evaluate": ("num_workers",),  # processes over images; integer counts are summed
}

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key."""


def load_schema() -> dict:
    """The config JSON schema as a dict."""
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _with_defaults(validator_class: type) -> type:
    """A validator class that fills in `default`s of missing properties while validating."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_DefaultingValidator = _with_defaults(jsonschema.Draft7Validator)


def _describe(error: jsonschema.ValidationError, prefix: str = "") -> str:
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in error.absolute_path]) or "<config>"
    value = error.instance
    match error.validator:
        case "minimum":
            return f"{key} must be >= {error.validator_value} (got {value!r})"
        case "exclusiveMinimum":
            return f"{key} must be > {error.validator_value} (got {value!r})"
        case "maximum":
            return f"{key} must be <= {error.validator_value} (got {value!r})"
        case "exclusiveMaximum":
            return f"{key} must be < {error.validator_value} (got {value!r})"
        case "enum":
            return f"{key} must be one of {error.validator_value} (got {value!r})"
        case "type":
            return f"{key} must be of type {error.validator_value} (got {value!r})"
        case "additionalProperties":
            return f"{key}: {error.message} (check the spelling against config/README.md)"
        case "required":
            return f"{key}: {error.message}"
    return f"{key}: {error.message}"


def validate_config(config: Mapping[str, Any]) -> dict:
    """Validate a config dict against the schema and return a copy with defaults filled in.

    Raises:
        ConfigError: naming every invalid key (one per line).
    """
    filled = copy.deepcopy(dict(config))
    schema = load_schema()
    errors = sorted(_DefaultingValidator(schema).iter_errors(filled), key=lambda e: list(e.absolute_path))
    messages = [_describe(e) for e in errors]
    if not errors:
        messages = (_run_errors(filled, schema) + _schedule_errors(filled.get("pa_train", {}).get("train"), "pa_train")
                    + _ranker_errors(filled))
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))
    return filled


def run_schema(schema: Mapping[str, Any]) -> dict:
    """Schema of one detector run merged over `detector.defaults` (every key checked, `grouping_run` too)."""
    detector = schema["properties"]["detector"]["properties"]
    merged = copy.deepcopy(detector["defaults"])
    for name, sub in detector["runs"]["additionalProperties"]["properties"].items():
        merged["properties"].setdefault(name, copy.deepcopy(sub))
    return merged


def merged_runs(detector: Mapping[str, Any]) -> dict[str, dict]:
    """Each run of the `detector` section deep-merged over its `defaults`: the runs as trained."""
    return {name: deep_merge(detector.get("defaults", {}), run) for name, run in detector.get("runs", {}).items()}


def _run_errors(filled: dict, schema: Mapping[str, Any]) -> list[str]:
    """Every detector run validated in full, as it will be trained (defaults + run)."""
    validator = jsonschema.Draft7Validator(run_schema(schema))
    messages = []
    for name, merged in merged_runs(filled.get("detector", {})).items():
        messages += _merged_run_errors(validator, merged, f"detector.runs.{name}")
    return messages


def _merged_run_errors(validator: jsonschema.Validator, merged: Mapping[str, Any], prefix: str) -> list[str]:
    messages = [_describe(e, prefix) for e in sorted(validator.iter_errors(merged), key=lambda e: list(e.path))]
    return messages + _schedule_errors(merged.get("train"), prefix)


def validate_run(merged: Mapping[str, Any], name: str = "run") -> dict:
    """Check one detector run already merged over `detector.defaults` (as `merged_runs` gives it).

    Raises:
        ConfigError: naming every invalid key as `detector.runs.<name>.<key>`.
    """
    validator = jsonschema.Draft7Validator(run_schema(load_schema()))
    messages = _merged_run_errors(validator, merged, f"detector.runs.{name}")
    if messages:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(messages))
    return dict(merged)


def tracked_settings(section: str, values: Mapping[str, Any]) -> dict:
    """`values` of config `section` without its `OUTPUT_NEUTRAL_KEYS`: what a rule's params track."""
    neutral = OUTPUT_NEUTRAL_KEYS.get(section, ())
    return {key: value for key, value in values.items() if key not in neutral}


def extract_settings(extract: Mapping[str, Any], proposals: bool = False) -> dict:
    """The keys of the extract section that one extraction reads.

    A pseudo-GT shard reads every key but `proposals_top_k`; GGN's PA proposals
    (`proposals`) read every key but `top_k` (they keep up to `proposals_top_k` masks per
    image). The workflow's keys (`sources`, `num_shards`) are left out.
    """
    unread = set(NON_OPTION_KEYS["extract"]) - {"proposals_top_k"} | {"top_k" if proposals else "proposals_top_k"}
    return {key: copy.deepcopy(value) for key, value in extract.items() if key not in unread}


def _ranker_errors(filled: Mapping[str, Any]) -> list[str]:
    """`merge.ranker` names a run that trains on seen GT only and can score boxes."""
    name = filled.get("merge", {}).get("ranker")
    if name is None:
        return []
    runs = merged_runs(filled.get("detector", {}))
    if name not in runs:
        return [f"merge.ranker: '{name}' is not a detector run (runs: {sorted(runs)})"]
    run = runs[name]
    if run.get("pseudo") or run.get("grouping_run"):
        return [f"merge.ranker: run '{name}' trains on pseudo-GT or on a grouping run; the ranker must be "
                f"trained on the annotated GT alone (GGN's OLN ranker), e.g. the baseline"]
    if run.get("detector", {}).get("arch") == "two_tower":
        return [f"merge.ranker: run '{name}' is a two_tower model, which cannot score boxes"]
    return []


def _schedule_errors(train: Mapping[str, Any] | None, section: str) -> list[str]:
    """A training needs `iterations` > 0 or `epochs` > 0."""
    if train and train.get("iterations", 1) == 0 and not train.get("epochs"):
        return [f"{section}.train: iterations is 0 and epochs is 0 (give the schedule in one of them)"]
    return []


def coerce_strings(values: Any, schema: Mapping[str, Any]) -> Any:
    """`values` with strings turned into what the schema asks for (numbers, booleans, lists, mappings).

    Snakemake passes nested `--config key=value` values as strings; this reads each such string
    as YAML where the schema does not allow a string there, so `--config 'pa_train={train:
    {iterations: 5}}'` means iterations 5. Values of other types are returned unchanged.
    """
    kinds = schema.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if isinstance(values, str) and kinds and "string" not in kinds and "enum" not in schema:
        try:
            parsed = yaml.safe_load(values)
        except yaml.YAMLError:
            return values
        return coerce_strings(parsed, schema) if not isinstance(parsed, str) else values
    if isinstance(values, list) and isinstance(schema.get("items"), Mapping):
        return [coerce_strings(v, schema["items"]) for v in values]
    if isinstance(values, Mapping):
        return {key: coerce_strings(value, _child_schema(schema, key)) for key, value in values.items()}
    return values


def coerce_config_strings(values: Mapping[str, Any]) -> dict:
    """`coerce_strings` against the config schema, detector runs checked as full runs."""
    schema = load_schema()
    schema["properties"]["detector"]["properties"]["runs"]["additionalProperties"] = run_schema(schema)
    return coerce_strings(dict(values), schema)


def _child_schema(schema: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    if key in schema.get("properties", {}):
        return schema["properties"][key]
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, Mapping) else {}


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> dict:
    """Read a YAML config file, apply dotted-key `overrides`, validate, fill defaults."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    for dotted, value in (overrides or {}).items():
        set_dotted(config, dotted, value)
    try:
        return validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def set_dotted(config: dict, dotted: str, value: Any) -> None:
    """Set `config["a"]["b"] = value` for `dotted = "a.b"`, creating sections."""
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def parse_override(text: str) -> tuple[str, Any]:
    """Parse a `key.sub=value` command-line override (value read as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def options_from_dict(cls: type[T], values: Mapping[str, Any] | None, section: str) -> T:
    """Build dataclass `cls` from `values`, recursing into nested dataclass fields.

    Keys not in `cls` raise ConfigError naming `section.key`; missing keys take
    the dataclass defaults.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        field_type = _dataclass_type(hints.get(name))
        if field_type is not None and isinstance(value, Mapping):
            value = options_from_dict(field_type, value, f"{section}.{name}")
        elif isinstance(value, list) and _is_tuple(hints.get(name)):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _dataclass_type(hint: Any) -> type | None:
    if dataclasses.is_dataclass(hint):
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple


def options_to_dict(options: Any) -> dict:
    """Plain-dict form of an options dataclass (for checkpoints and logs)."""
    return dataclasses.asdict(options)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict:
    """`base` with `override`'s keys replaced, recursing into mappings (neither is modified)."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
