# Pseudo ground truth: group predicted affinity into ranked masks over every image
# source (sharded), merge the best into a training json; evaluate PA proposals on val.


rule index_folder:
    output:
        f"{OUT}/data/sources/{{source}}.json",
    params:
        folder=lambda wildcards: SOURCES[wildcards.source]["folder"],
        # the folder's image names, sizes and mtimes: adding, removing or replacing one re-indexes
        files=lambda wildcards: folder_fingerprint(SOURCES[wildcards.source]["folder"]),
        code=code_hash("index_folder"),
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/index_folder/{{source}}.log",
    benchmark:
        f"{OUT}/benchmarks/index_folder/{{source}}.tsv"
    resources:
        **resources_of("index_folder"),
    shell:
        "exec oln index-folder --folder {params.folder:q} --out {output} > {log} 2>&1"


rule extract_pseudo:
    input:
        model=rules.train_pa.output.model,
        images=lambda wildcards: SOURCES[wildcards.source]["json"],
    output:
        f"{OUT}/pseudo/{{source}}/shard-{{shard}}-of-{{num_shards}}.json",
    params:
        **split_params(device=True),
        section=settings("extract", extract_settings(config["extract"])),
        code=code_hash("extract"),
        image_root=lambda wildcards: SOURCES[wildcards.source]["images"],
        filter_flag=lambda wildcards: FILTER_FLAG if wildcards.source == "train" else "--no-filter-empty-gt",
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/extract_pseudo/{{source}}-{{shard}}-of-{{num_shards}}.log",
    benchmark:
        f"{OUT}/benchmarks/extract_pseudo/{{source}}-{{shard}}-of-{{num_shards}}.tsv"
    threads: threads_of("extract_pseudo", 8)
    resources:
        **resources_of("extract_pseudo"),
    shell:
        "OMP_NUM_THREADS=1 exec oln extract --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q}"
        " --model {input.model} --images-json {input.images} --image-root {params.image_root:q}"
        " --source {wildcards.source} --shard {wildcards.shard} --num-shards {wildcards.num_shards}"
        " --workers {threads} --out {output} {params.filter_flag} --device {params.device} > {log} 2>&1"


rule merge_pseudo:
    input:
        gt=DATA["train_json"],
        shards=pseudo_shards(),
        ranker=ranker_model(),
    output:
        train=f"{OUT}/pseudo/train.json",
        stats=f"{OUT}/pseudo/stats.json",
        gallery=report(f"{OUT}/pseudo/gallery.png", caption="../report/pseudo_gallery.rst",
                       category="Pseudo ground truth"),
    params:
        **split_params(),
        section=settings("merge", {k: v for k, v in config["merge"].items() if k != "ranker"}),
        ranker=config["merge"]["ranker"] or "",
        ranker_args=lambda wildcards, input: f"--ranker-model {input.ranker} --device {config['device']}"
        if input.ranker else "",
        code=code_hash("merge"),
        image_root=DATA["train_images"],
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/merge_pseudo.log",
    benchmark:
        f"{OUT}/benchmarks/merge_pseudo.tsv"
    resources:
        **resources_of("merge_pseudo"),
    shell:
        "OMP_NUM_THREADS={threads} exec oln merge --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q} --gt-json {input.gt} --image-root {params.image_root}"
        " --shards {input.shards} --out-json {output.train} --stats {output.stats}"
        " --gallery {output.gallery} {params.ranker_args} > {log} 2>&1"


rule pa_proposals:
    """GGN's `--eval-proposals`: the grouping's own masks on val, evaluated as a detector."""
    input:
        model=rules.train_pa.output.model,
        images=DATA["val_json"],
    output:
        f"{OUT}/pseudo/val_proposals.json",
    params:
        **split_params(seen=EVAL_SEEN, device=True),
        section=settings("extract", extract_settings(config["extract"], proposals=True)),
        code=code_hash("extract"),
        image_root=DATA["val_images"],
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/pa_proposals.log",
    benchmark:
        f"{OUT}/benchmarks/pa_proposals.tsv"
    threads: threads_of("pa_proposals", 8)
    resources:
        **resources_of("pa_proposals"),
    shell:
        "OMP_NUM_THREADS=1 exec oln extract --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q} --proposals"
        " --model {input.model} --images-json {input.images} --image-root {params.image_root}"
        " --source val --shard 0 --num-shards 1 --workers {threads} --out {output} --no-filter-empty-gt"
        " --device {params.device} > {log} 2>&1"
