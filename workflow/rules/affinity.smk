# Pairwise affinity: train on seen-category masks, evaluate on seen vs unseen objects.


rule train_pa:
    input:
        train=DATA["train_json"],
    output:
        model=f"{OUT}/pa/model.pt",
        log_jsonl=f"{OUT}/pa/log.jsonl",
        curve=report(f"{OUT}/pa/curve.png", caption="../report/pa_curve.rst", category="Pairwise affinity"),
    params:
        section=section("pa_train"),
        dataset=section("dataset"),
        code=code_hash("oln/affinity", "oln/engine.py", "oln/data/coco.py", "oln/data/transforms.py"),
        image_root=DATA["train_images"],
        out_dir=f"{OUT}/pa",
        launcher=lambda wildcards, resources: launcher(resources),
    log:
        f"{OUT}/logs/train_pa.log",
    benchmark:
        f"{OUT}/benchmarks/train_pa.tsv"
    threads: 8
    retries: config["retries"]
    resources:
        **resources_of("train_pa"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train-pa --params {params.section:q} {SPLITS}"
        " --train-json {input.train} --image-root {params.image_root} --out-dir {params.out_dir}"
        " --device {config[device]} > {log} 2>&1"


rule eval_pa:
    input:
        model=rules.train_pa.output.model,
        val=DATA["val_json"],
    output:
        metrics=f"{OUT}/pa/metrics.json",
        grid=report(f"{OUT}/pa/grid.png", caption="../report/pa_grid.rst", category="Pairwise affinity"),
    params:
        section=section("pa_eval"),
        dataset=section("dataset"),
        code=code_hash("oln/affinity", "oln/data/coco.py"),
        image_root=DATA["val_images"],
    log:
        f"{OUT}/logs/eval_pa.log",
    benchmark:
        f"{OUT}/benchmarks/eval_pa.tsv"
    threads: 8
    resources:
        **resources_of("eval_pa"),
    shell:
        "OMP_NUM_THREADS={threads} oln eval-pa --params {params.section:q} {SPLITS}"
        " --model {input.model} --val-json {input.val} --image-root {params.image_root}"
        " --out-json {output.metrics} --out-grid {output.grid} --device {config[device]} > {log} 2>&1"
