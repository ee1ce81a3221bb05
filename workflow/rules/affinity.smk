# Pairwise affinity: train on seen-category masks, evaluate on seen vs unseen objects.


rule train_pa:
    input:
        train=DATA["train_json"],
    output:
        model=f"{OUT}/pa/model.pt",
        log_jsonl=f"{OUT}/pa/log.jsonl",
        curve=report(f"{OUT}/pa/curve.png", caption="../report/pa_curve.rst", category="Pairwise affinity"),
    params:
        **split_params(device=True),
        section=settings("pa_train"),
        code=code_hash("train_pa"),
        image_root=DATA["train_images"],
        filter_flag=FILTER_FLAG,
        out_dir=lambda wildcards, output: str(Path(output.model).parent),
        launcher=lambda wildcards, resources: launcher(resources),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/train_pa.log",
    benchmark:
        f"{OUT}/benchmarks/train_pa.tsv"
    threads: threads_of("train_pa", 8)
    resources:
        **resources_of("train_pa"),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launcher} train-pa --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q}"
        " --train-json {input.train} --image-root {params.image_root} --out-dir {params.out_dir}"
        " {params.filter_flag} --device {params.device} > {log} 2>&1"


rule eval_pa:
    input:
        model=rules.train_pa.output.model,
        val=DATA["val_json"],
    output:
        metrics=f"{OUT}/pa/metrics.json",
        grid=report(f"{OUT}/pa/grid.png", caption="../report/pa_grid.rst", category="Pairwise affinity"),
    params:
        **split_params(seen=EVAL_SEEN, device=True),
        section=settings("pa_eval"),
        code=code_hash("eval_pa"),
        image_root=DATA["val_images"],
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/eval_pa.log",
    benchmark:
        f"{OUT}/benchmarks/eval_pa.tsv"
    threads: threads_of("eval_pa", 8)
    resources:
        **resources_of("eval_pa"),
    shell:
        "OMP_NUM_THREADS={threads} exec oln eval-pa --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q}"
        " --model {input.model} --val-json {input.val} --image-root {params.image_root}"
        " --out-json {output.metrics} --out-grid {output.grid} --device {params.device} > {log} 2>&1"
