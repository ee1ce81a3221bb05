# Class-agnostic detectors: one training per run in detector.runs (baseline: seen GT
# only; ggn: seen GT + pseudo-GT; ...), then predictions on the val split. A two_tower run
# trains on top of its grouping run's model.pt (`grouping_run`).


rule train_detector:
    input:
        train=detector_train_json,
        grouping=grouping_model_of,
    output:
        model=f"{OUT}/detector/{{run}}/model.pt",
        log_jsonl=f"{OUT}/detector/{{run}}/log.jsonl",
        curve=report(f"{OUT}/detector/{{run}}/curve.png", caption="../report/detector_curve.rst",
                     category="Detectors", subcategory="{run}"),
    params:
        **split_params(device=True),
        run=lambda wildcards: json.dumps(RUNS[wildcards.run], sort_keys=True),
        code=code_hash("train_detector"),
        image_root=lambda wildcards: DATA["train_images"],
        filter_flag=FILTER_FLAG,
        grouping=lambda wildcards, input: f"--grouping-model {input.grouping}" if input.grouping else "",
        out_dir=lambda wildcards, output: str(Path(output.model).parent),
        launcher=lambda wildcards, resources: launcher(resources),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/train_detector/{{run}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_detector/{{run}}.tsv"
    threads: threads_of("train_detector", 8)
    resources:
        **resources_of("train_detector"),
    shell:
        "OMP_NUM_THREADS={threads} exec {params.launcher} train-detector --params {params.run:q} --seen {params.seen:q} --unseen {params.unseen:q}"
        " --train-json {input.train} --image-root {params.image_root} --out-dir {params.out_dir}"
        " {params.filter_flag} {params.grouping} --device {params.device} > {log} 2>&1"


rule predict:
    input:
        model=rules.train_detector.output.model,
        images=DATA["val_json"],
    output:
        f"{OUT}/detector/{{run}}/predictions.json",
    params:
        device=config["device"],
        section=settings("predict"),
        code=code_hash("predict"),
        image_root=DATA["val_images"],
        workers=untracked(config["predict"]["num_workers"]),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/predict/{{run}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{run}}.tsv"
    threads: threads_of("predict", 8)
    resources:
        **resources_of("predict"),
    shell:
        "OMP_NUM_THREADS={threads} exec oln predict --params {params.section:q}"
        " --model {input.model} --images-json {input.images} --image-root {params.image_root}"
        " --out {output} --workers {params.workers} --device {params.device} > {log} 2>&1"
