# AR@k on unseen categories (cross-category protocol: seen objects never use up the budget).


rule evaluate:
    input:
        gt=DATA["val_json"],
        detections=eval_detections,
    output:
        f"{OUT}/eval/{{name}}.json",
    params:
        **split_params(seen=EVAL_SEEN),
        section=settings("evaluate"),
        code=code_hash("evaluate"),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/evaluate/{{name}}.log",
    benchmark:
        f"{OUT}/benchmarks/evaluate/{{name}}.tsv"
    threads: threads_of("evaluate", 4)
    resources:
        **resources_of("evaluate"),
    shell:
        "exec oln evaluate --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q} --gt-json {input.gt}"
        " --detections {input.detections} --workers {threads} --out {output} > {log} 2>&1"
