# oln: GGN/OLN open-world instance segmentation as one Snakemake DAG.
# Every rule calls one `oln` subcommand; the science lives in the `oln` package.
# Usage: snakemake --cores all [--configfile config/coco_voc_to_nonvoc.yaml] [--profile slurm]

# The embedded default applies only when no --configfile is given: a user's config file is
# layered over the schema defaults (GGN's and OLN's recipe), never over the demo's settings.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/affinity.smk"
include: "workflow/rules/pseudo.smk"
include: "workflow/rules/detector.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# `replicates_from: synthesis`: replicate k >= 1 is this workflow again as a module with `replicate: k`
# (its own data, PA, pseudo-GT and detectors under results/<experiment>/seed-<k>/, rules named seed<k>_*).
for _k in range(1, config["replicates"]) if REPLICATE_DIRS else ():
    workflow.module(name=f"seed{_k}", snakefile="Snakefile", config={**config, "replicate": _k})
    workflow.userule(rules=["*"], from_module=f"seed{_k}", exclude_rules=["all"], name_modifier=f"seed{_k}_*",
                     lineno=1)(lambda: None)


rule all:
    input:
        all_targets(),
    default_target: True
