# Data stage: the resolved config and provenance, the synthetic open-world dataset (or the
# configured COCO files) and its summary.


rule record_config:
    output:
        config=f"{OUT}/config.yaml",
        provenance=f"{OUT}/provenance.json",
    params:
        resolved=json.dumps(config, sort_keys=True),
        code=code_hash("record_config"),
        out_dir=lambda wildcards, output: str(Path(output.config).parent),
        repo=untracked(str(REPO)),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/record_config.log",
    resources:
        **resources_of("record_config"),
    shell:
        "exec oln record-config --resolved {params.resolved:q} --out-dir {params.out_dir} --repo {params.repo:q}"
        " > {log} 2>&1"


rule synthesize:
    output:
        train=f"{OUT}/data/train.json",
        val=f"{OUT}/data/val.json",
        unlabeled=f"{OUT}/data/unlabeled.json",
    params:
        section=settings("synthetic"),
        code=code_hash("synthesize"),
        out_dir=lambda wildcards, output: str(Path(output.train).parent),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/synthesize.log",
    benchmark:
        f"{OUT}/benchmarks/synthesize.tsv"
    resources:
        **resources_of("synthesize"),
    shell:
        "exec oln synthesize --out {params.out_dir} --params {params.section:q} > {log} 2>&1"


rule summarize_data:
    input:
        train=DATA["train_json"],
        val=DATA["val_json"],
    output:
        summary=f"{OUT}/data/summary.json",
        preview=report(f"{OUT}/data/preview.png", caption="../report/preview.rst", category="Data"),
    params:
        code=code_hash("summarize_data"),
        image_root=DATA["train_images"],
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/summarize_data.log",
    benchmark:
        f"{OUT}/benchmarks/summarize_data.tsv"
    resources:
        **resources_of("summarize_data"),
    shell:
        "exec oln summarize-data --json train={input.train} --json val={input.val}"
        " --image-root {params.image_root} --summary-out {output.summary}"
        " --preview-out {output.preview} > {log} 2>&1"
