# Shared helpers: config validation (schema defaults), output paths, stage params.
import functools
import json
import os
import shlex
import signal
import sys
from pathlib import Path

from oln.code_hash import stage_code_hash
from oln.config import coerce_config_strings, extract_settings, merged_runs, tracked_settings, validate_config
from oln.data.folders import folder_fingerprint
from snakemake.utils import update_config

# Slurm sends SIGUSR1 (--signal=USR1@T) to the whole job before its time limit: Snakemake
# inside the job must survive it so the training process (which checkpoints on it) is
# waited for and its non-zero exit is reported; see docs/cluster.md.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)

# `--config` values arrive as strings below the top level: read them as the schema's types.
update_config(config, coerce_config_strings(workflow.config_settings.overwrite_config or {}))
# Validate once with the project schema (fills every default, names a bad key).
_validated = validate_config(config)
config.clear()
config.update(_validated)

# The command line that built the DAG, for results/<experiment>/provenance.json: set once in
# the process the user started; jobs (local or submitted to Slurm) inherit the variable.
os.environ.setdefault("OLN_SNAKEMAKE_COMMAND", shlex.join(sys.argv))



def shift_seeds(config, k):
    """Replicate k of `replicates_from: synthesis`: every seed of the chain (data, PA, detectors) plus k."""
    config["synthetic"]["seed"] += k
    config["pa_train"]["train"]["seed"] += k
    detector = config["detector"]
    detector["defaults"]["train"]["seed"] = detector["defaults"]["train"].get("seed", 0) + k
    for run in detector["runs"].values():
        if "seed" in run.get("train", {}):
            run["train"]["seed"] += k


REPLICATE = config["replicate"]
if REPLICATE:
    shift_seeds(config, REPLICATE)
OUT = os.path.join("results", config["experiment"], *([f"seed-{REPLICATE}"] if REPLICATE else []))
# Branches of `replicates_from: synthesis` (results/<experiment>/seed-<k>/), built by the Snakefile.
REPLICATE_DIRS = (
    [f"{OUT}/seed-{k}" for k in range(1, config["replicates"])]
    if config["replicates_from"] == "synthesis" and not REPLICATE
    else []
)
DATASET = config["dataset"]
# GGN trains PA and detectors (and so extracts pseudo-GT) on images with seen-class GT only.
FILTER_FLAG = "--filter-empty-gt" if DATASET["filter_empty_gt"] else "--no-filter-empty-gt"
# Categories treated as seen where the val set is evaluated (cross-dataset settings: none).
EVAL_SEEN = DATASET["seen"] if DATASET["eval_seen"] is None else DATASET["eval_seen"]
SYNTHETIC = DATASET["kind"] == "synthetic"
REPO = Path(workflow.basedir)


# Re-run scope: a rule's params are exactly what changes its outputs. Snakemake re-runs a job
# when a params value changes, except a "derived" one (a function of threads, input, output or
# resources), which it does not track: `untracked` wraps settings that never change outputs.


def settings(name, values=None):
    """Config section `name` (or `values` taken from it) as canonical JSON, without the keys
    that never change outputs (oln.config.OUTPUT_NEUTRAL_KEYS): the stage's `--params`."""
    return json.dumps(tracked_settings(name, config[name] if values is None else values), sort_keys=True)


@functools.cache
def code_hash(command):
    """Hash of the code a stage runs: its command module `oln/commands/<command>.py` and every
    `oln` module it imports (oln.code_hash); editing one of them re-runs the stage."""
    return stage_code_hash([f"oln.commands.{command}"], REPO / "oln")


def split_params(seen=None, device=False):
    """The params of a stage on the category split: seen ids (default: the training split's) and
    unseen ids as JSON, and the device when the stage runs a network."""
    params = {"seen": json.dumps(DATASET["seen"] if seen is None else seen), "unseen": json.dumps(DATASET["unseen"])}
    if device:
        params["device"] = config["device"]
    return params


def untracked(value):
    """A params value whose edits re-run nothing (for worker counts): Snakemake does not track a
    param that is a function of `threads`."""
    return lambda wildcards, threads: value


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


def resources_of(rule_name):
    """Cluster resources of a rule: resources.default overlaid by resources.<rule>.

    `gpus` becomes the Slurm plugin's `gpu` resource (sbatch --gpus); the other keys
    (cpus_per_task, mem_mb, runtime, slurm_partition, slurm_account) pass through.
    """
    merged = dict(config["resources"].get("default", {}))
    merged.update(config["resources"].get(rule_name, {}))
    if "gpus" in merged:
        merged["gpu"] = merged.pop("gpus")
    return merged


def all_targets():
    """Every final output of the experiment (rule all)."""
    return [
        f"{OUT}/config.yaml",
        f"{OUT}/data/summary.json",
        f"{OUT}/data/preview.png",
        f"{OUT}/pa/metrics.json",
        f"{OUT}/pseudo/stats.json",
        *expand(f"{OUT}/eval/{{name}}.json", name=list(EVALS) + ["pa_proposals"]),
        f"{OUT}/summary.csv",
    ]


def replicate_evals():
    """Evaluation jsons of the synthesis replicates' branches (inputs of the top-level report)."""
    names = list(EVALS) + ["pa_proposals"]
    return [f"{d}/eval/{name}.json" for d in REPLICATE_DIRS for name in names]


def threads_of(rule_name, default):
    """Threads of a rule: its resources' cpus_per_task when configured, else `default`.

    Locally Snakemake caps threads at --cores; on Slurm the job gets this many CPUs.
    """
    return int(resources_of(rule_name).get("cpus_per_task", default))


def launcher(resources):
    """`oln` for one process; for a multi-GPU job `python -m oln.launch`, which starts one process
    per GPU the job really has (torchrun), so a workstation with fewer GPUs than
    `resources.<rule>.gpus` (or none) still runs the stage, with a warning."""
    gpus = int(resources.get("gpu", 0) or 0)
    if gpus > 1:
        return f"python -m oln.launch --gpus {gpus} --"
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


def ranker_model():
    """model.pt of `merge.ranker` (GGN's OLN ranker, a run trained on seen GT), or no input."""
    name = config["merge"]["ranker"]
    return [f"{OUT}/detector/{name}/model.pt"] if name else []


def detector_runs():
    """Each run of detector.runs deep-merged over detector.defaults; a two_tower run's
    `grouping_run` must name another run that is not two_tower (its grouping tower)."""
    runs = merged_runs(config["detector"])
    for name, run in runs.items():
        two_tower = run.get("detector", {}).get("arch") == "two_tower"
        grouping = run.get("grouping_run")
        if not two_tower and grouping is not None:
            raise ValueError(f"detector.runs.{name}.grouping_run is only for arch two_tower")
        if two_tower and (grouping not in runs or grouping == name
                          or runs[grouping].get("detector", {}).get("arch") == "two_tower"):
            raise ValueError(f"detector.runs.{name}.grouping_run must name another run that is not two_tower "
                             f"(runs: {sorted(runs)}), got {grouping!r}")
    return runs


def replicate_name(run, k):
    """Name of replicate k of a run: the run itself for k = 0, else `<run>@seed<k>`."""
    return run if k == 0 else f"{run}@seed{k}"


def with_replicates(runs, replicates):
    """Runs expanded over detector seeds (`replicates_from: detector`): replicate k of each run trains with
    train.seed + k, and a two_tower replicate uses the same replicate of its grouping run."""
    expanded = {}
    for k in range(replicates):
        for name, run in runs.items():
            run = json.loads(json.dumps(run))
            run["train"]["seed"] = run["train"].get("seed", 0) + k
            if run.get("grouping_run"):
                run["grouping_run"] = replicate_name(run["grouping_run"], k)
            expanded[replicate_name(name, k)] = run
    return expanded


RUNS = detector_runs()
if config["replicates_from"] == "detector":
    RUNS = with_replicates(RUNS, config["replicates"])


def evaluation_names():
    """Evaluation name -> predictions file under detector/: one per run."""
    return {name: f"{name}/predictions.json" for name in RUNS}


EVALS = evaluation_names()


def detector_train_json(wildcards):
    """Seen GT alone, or the merged GT + pseudo-GT json, by the run's `pseudo` flag."""
    return f"{OUT}/pseudo/train.json" if RUNS[wildcards.run]["pseudo"] else DATA["train_json"]


def eval_detections(wildcards):
    """Predictions behind an evaluation name: a run, or PA proposals."""
    if wildcards.name == "pa_proposals":
        return f"{OUT}/pseudo/val_proposals.json"
    return f"{OUT}/detector/{EVALS[wildcards.name]}"


def grouping_model_of(wildcards):
    """The grouping run's model.pt for a two_tower run (its grouping tower), else nothing."""
    grouping = RUNS[wildcards.run].get("grouping_run")
    return f"{OUT}/detector/{grouping}/model.pt" if grouping else []
