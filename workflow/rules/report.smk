# Results people look at: summary table, AR@k curves, training curves, galleries.


rule report:
    input:
        evals=expand(f"{OUT}/eval/{{name}}.json", name=list(EVALS) + ["pa_proposals"]),
        replicate_evals=replicate_evals(),
        pa_metrics=rules.eval_pa.output.metrics,
        pseudo_stats=rules.merge_pseudo.output.stats,
        predictions=expand(f"{OUT}/detector/{{run}}/predictions.json", run=list(RUNS)),
        logs=[rules.train_pa.output.log_jsonl]
        + expand(f"{OUT}/detector/{{run}}/log.jsonl", run=list(RUNS)),
        val=DATA["val_json"],
    output:
        csv=report(f"{OUT}/summary.csv", caption="../report/summary.rst", category="Summary"),
        md=f"{OUT}/summary.md",
        ar_curves=report(f"{OUT}/plots/ar_curves.png", caption="../report/ar_curves.rst", category="Summary"),
        training=report(f"{OUT}/plots/training_curves.png", caption="../report/training_curves.rst",
                        category="Summary"),
        comparison=report(f"{OUT}/plots/baseline_vs_ggn.png", caption="../report/comparison.rst",
                          category="Summary"),
    params:
        **split_params(seen=EVAL_SEEN),
        section=settings("report"),
        code=code_hash("report"),
        exp_dir=lambda wildcards, output: str(Path(output.csv).parent),
        image_root=DATA["val_images"],
        replicate_dirs=" ".join(["--replicate-dirs", *REPLICATE_DIRS]) if REPLICATE_DIRS else "",
    conda:
        "../../envs/oln.yaml"
    log:
        f"{OUT}/logs/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    resources:
        **resources_of("report"),
    shell:
        "exec oln report --params {params.section:q} --seen {params.seen:q} --unseen {params.unseen:q} --exp-dir {params.exp_dir}"
        " --val-json {input.val} --image-root {params.image_root} {params.replicate_dirs} > {log} 2>&1"
