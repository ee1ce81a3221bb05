# Class-agnostic detectors: one training per run in detector.runs (baseline: seen GT
# only; ggn: seen GT + pseudo-GT; ...), then predictions on the val split.


def detector_train_json(wildcards):
    """Seen GT alone, or the merged GT + pseudo-GT json, by the run's `pseudo` flag."""
    return rules.merge_pseudo.output.train if RUNS[wildcards.run]["pseudo"] else DATA["train_json"]


rule train_detector:
    input:
        train=detector_train_json,
    output:
        model=f"{OUT}/detector/{{run}}/model.pt",
        log_jsonl=f"{OUT}/detector/{{run}}/log.jsonl",
        curve=report(f"{OUT}/detector/{{run}}/curve.png", caption="../report/detector_curve.rst",
                     category="Detectors", subcategory="{run}"),
    params:
        run=lambda wildcards: json.dumps(RUNS[wildcards.run], sort_keys=True),
        dataset=section("dataset"),
        code=code_hash("oln/detector", "oln/engine.py", "oln/data/coco.py", "oln/data/transforms.py"),
        image_root=lambda wildcards: DATA["train_images"],
        out_dir=f"{OUT}/detector/{{run}}",
        launcher=lambda wildcards, resources: launcher(resources),
    log:
        f"{OUT}/logs/train_detector/{{run}}.log",
    benchmark:
        f"{OUT}/benchmarks/train_detector/{{run}}.tsv"
    threads: 8
    retries: config["retries"]
    resources:
        **resources_of("train_detector"),
    shell:
        "OMP_NUM_THREADS={threads} {params.launcher} train-detector --params {params.run:q} {SPLITS}"
        " --train-json {input.train} --image-root {params.image_root} --out-dir {params.out_dir}"
        " --device {config[device]} > {log} 2>&1"


rule predict:
    input:
        model=rules.train_detector.output.model,
        images=DATA["val_json"],
    output:
        f"{OUT}/detector/{{run}}/predictions{{tower}}.json",
    wildcard_constraints:
        tower="|_a|_b",
    params:
        section=section("predict"),
        code=code_hash("oln/detector", "oln/data/coco.py"),
        image_root=DATA["val_images"],
        tower=lambda wildcards: f"--tower {wildcards.tower[1:]}" if wildcards.tower else "",
    log:
        f"{OUT}/logs/predict/{{run}}{{tower}}.log",
    benchmark:
        f"{OUT}/benchmarks/predict/{{run}}{{tower}}.tsv"
    threads: 8
    resources:
        **resources_of("predict"),
    shell:
        "OMP_NUM_THREADS={threads} oln predict --params {params.section:q} {params.tower}"
        " --model {input.model} --images-json {input.images} --image-root {params.image_root}"
        " --out {output} --device {config[device]} > {log} 2>&1"
