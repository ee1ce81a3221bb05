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


rule all:
    input:
        all_targets(),
    default_target: True
