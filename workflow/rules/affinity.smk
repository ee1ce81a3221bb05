# Pairwise affinity: train on seen-category masks, evaluate on seen vs unseen objects.


rule train_pa:
    input:
        train=DATA["train_json"],
    output:
        model=f"{OUT}/pa/model.pt",
        log_jsonl=f"{OUT}/pa/log.jsonl",
        curve=report(f"{OUT}/pa/curve.png", caption="../report/pa_curve.rst", category="Pairwise affinity"),
    params:
        seen=json.dumps(DATASET["seen"]),
        unseen=json.dumps(DATASET["unseen"]),
        device=config["device"],
        section=section("pa_train"),
        dataset=section("dataset"),
        code=code_hash("oln/affinity", "oln/backbones.py", "oln/engine.py", "oln/data/coco.py", "oln/data/transforms.py"),
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
        seen=EVAL_SEEN,
        unseen=json.dumps(DATASET["unseen"]),
        device=config["device"],
        section=section("pa_eval"),
        dataset=section("dataset"),
        code=code_hash("oln/backbones.py", "oln/affinity", "oln/data/coco.py"),
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
