# Shared helpers: config validation (schema defaults), output paths, stage params.
import hashlib
import json
from pathlib import Path

from oln.config import deep_merge, validate_config

# Validate once with the project schema (fills every default, names a bad key).
_validated = validate_config(config)
config.clear()
config.update(_validated)

OUT = f"results/{config['experiment']}"
DATASET = config["dataset"]
SYNTHETIC = DATASET["kind"] == "synthetic"
REPO = Path(workflow.basedir)


def section(name):
    """A config section as canonical JSON: a params value, so editing it re-runs the stage."""
    return json.dumps(config[name], sort_keys=True)


def code_hash(*paths):
    """Hash of the library files a stage runs: a params value, so code edits re-run it."""
    digest = hashlib.sha256()
    for rel in paths:
        root = REPO / rel
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for path in files:
            digest.update(path.relative_to(REPO).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def data_paths():
    """Train/val COCO jsons and image roots of the experiment."""
    if SYNTHETIC:
        root = f"{OUT}/data/images"
        return {
            "train_json": f"{OUT}/data/train.json", "train_images": root,
            "val_json": f"{OUT}/data/val.json", "val_images": root,
            "unlabeled_json": f"{OUT}/data/unlabeled.json", "unlabeled_images": root,
        }
    missing = [k for k in ("train_json", "train_images", "val_json", "val_images") if not DATASET[k]]
    if missing:
        raise ValueError(f"dataset.kind is coco but dataset.{missing[0]} is not set (fill it in the config)")
    return {k: DATASET[k] for k in ("train_json", "train_images", "val_json", "val_images")}


DATA = data_paths()
SPLITS = f"--seen {json.dumps(DATASET['seen'])!r} --unseen {json.dumps(DATASET['unseen'])!r}"


def resources_of(rule_name):
    """Cluster resources of a rule: resources.default overlaid by resources.<rule>."""
    merged = dict(config["resources"].get("default", {}))
    merged.update(config["resources"].get(rule_name, {}))
    return merged


def all_targets():
    """Every final output of the experiment (rule all)."""
    return [
        f"{OUT}/data/summary.json",
        f"{OUT}/data/preview.png",
        f"{OUT}/pa/metrics.json",
        f"{OUT}/pseudo/stats.json",
        *expand(f"{OUT}/eval/{{name}}.json", name=list(EVALS) + ["pa_proposals"]),
        f"{OUT}/summary.csv",
    ]


def launcher(resources):
    """`oln` for one process, `torchrun ... -m oln.cli` for one process per GPU of the job."""
    gpus = int(resources.get("gpu", 0) or resources.get("gpus", 0) or 0)
    if gpus > 1:
        return f"torchrun --standalone --nproc_per_node={gpus} -m oln.cli"
    return "oln"


def image_sources():
    """Pseudo-GT image sources by name: their images json, image root, and folder if indexed."""
    sources = {}
    for spec in config["extract"]["sources"]:
        if isinstance(spec, str):
            if spec == "train":
                sources["train"] = {"json": DATA["train_json"], "images": DATA["train_images"]}
            elif spec == "unlabeled" and SYNTHETIC:
                sources["unlabeled"] = {"json": DATA["unlabeled_json"], "images": DATA["unlabeled_images"]}
            else:
                raise ValueError(f"extract.sources: unknown source '{spec}' (train, unlabeled, or a mapping)")
        elif "folder" in spec:
            sources[spec["name"]] = {"json": f"{OUT}/data/sources/{spec['name']}.json",
                                     "images": spec["folder"], "folder": spec["folder"]}
        else:
            sources[spec["name"]] = {"json": spec["json"], "images": spec["images"]}
    return sources


SOURCES = image_sources()


def pseudo_shards():
    """Every shard file of every source (extract.num_shards each)."""
    n = config["extract"]["num_shards"]
    return [f"{OUT}/pseudo/{name}/shard-{i}-of-{n}.json" for name in SOURCES for i in range(n)]


def detector_runs():
    """Each run of detector.runs deep-merged over detector.defaults."""
    return {name: deep_merge(config["detector"]["defaults"], run) for name, run in config["detector"]["runs"].items()}


RUNS = detector_runs()


def evaluation_names():
    """Evaluation name -> predictions file under detector/: runs, plus towers A/B of two-tower runs."""
    names = {}
    for name, run in RUNS.items():
        names[name] = f"{name}/predictions.json"
        if run.get("detector", {}).get("arch") == "two_tower":
            names[f"{name}_a"] = f"{name}/predictions_a.json"
            names[f"{name}_b"] = f"{name}/predictions_b.json"
    return names


EVALS = evaluation_names()
