# AR@k on unseen categories (cross-category protocol: seen objects never use up the budget).


def eval_detections(wildcards):
    """Predictions behind an evaluation name: a run, a two-tower tower (`run_a`), or PA proposals."""
    if wildcards.name == "pa_proposals":
        return rules.pa_proposals.output[0]
    return f"{OUT}/detector/{EVALS[wildcards.name]}"


rule evaluate:
    input:
        gt=DATA["val_json"],
        detections=eval_detections,
    output:
        f"{OUT}/eval/{{name}}.json",
    params:
        section=section("evaluate"),
        dataset=section("dataset"),
        code=code_hash("oln/evaluation"),
    log:
        f"{OUT}/logs/evaluate/{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{name}}.tsv"
    threads: 4
    resources:
        **resources_of("evaluate"),
    shell:
        "oln evaluate --params {params.section:q} {SPLITS} --gt-json {input.gt}"
        " --detections {input.detections} --workers {threads} --out {output} > {log} 2>&1"
