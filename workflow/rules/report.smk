# MLflow mirror of each evaluation point, the experiment summary, the comparison report and the
# final MLflow sync (backfill after an outage, report attached to every sweep point's parent run).


rule track:
    input:
        eval=f"{AFTER}/eval.parquet",
        population=population_after,
        slow_metrics=slow_metrics_before,
        round_provenance=round_provenance_before,
        previous=previous_tracked,
        test=test_eval_of_final,
    output:
        f"{AFTER}/tracked.json",
    log:
        f"{AFTER}/track.log",
    params:
        slow=lambda w, input: f"--slow-metrics {input.slow_metrics}" if input.slow_metrics else "",
        test=lambda w, input: f"--test {input.test}" if input.test else "",
        uri=TRACKING_URI_OPTION,
        point=lambda w: as_json(point_params(w)),
        results=lambda w, output: results_root(output[0]),
        experiment=EXPERIMENT,
    message:
        "{wildcards.arm} seed {wildcards.seed}: MLflow mirror after {wildcards.k} rounds"
    conda:
        ENV
    shell:
        "fst track --eval {input.eval} --population {input.population} {params.slow} {params.test} "
        "--round-provenance {input.round_provenance} --results-dir {params.results} "
        "--experiment {params.experiment} --point {wildcards.point:q} --arm {wildcards.arm} "
        "--seed {wildcards.seed} --after-rounds {wildcards.k} --params {params.point:q} {params.uri} "
        "--out {output} 2> {log}"


rule summary:
    input:
        evals=of_runs(f"{AFTER}/eval.parquet", "main"),
        tests=expand(f"{RUN}/eval/test.parquet", **RUN_WILDCARDS),
        samples=of_runs(f"{AFTER}/samples.parquet", "main"),
        round_provenance=all_round_provenance(),
    output:
        summary=f"{EXP_DIR}/summary.parquet",
        scores=f"{EXP_DIR}/scores.parquet",
    log:
        f"{EXP_DIR}/logs/summary.log",
    message:
        "Summarising {EXPERIMENT}"
    conda:
        ENV
    shell:
        "fst summarize --evals {input.evals} --tests {input.tests} --samples {input.samples} "
        "--round-provenance {input.round_provenance} --out {output.summary} --scores {output.scores} "
        "2> {log}"


rule report:
    input:
        summary=kind_summary("main"),
        scores=kind_summary("main", "scores"),
        plasticity_summary=kind_summary("plasticity"),
        plasticity_scores=kind_summary("plasticity", "scores"),
        continual_summary=kind_summary("continual"),
        continual_scores=kind_summary("continual", "scores"),
        decomposition=decomposition_files(),
        decomposition_samples=decomposition_files("decomposition_samples"),
        posthoc_evals=posthoc_files("eval"),
        posthoc_provenance=posthoc_files("provenance"),
    output:
        tables=directory(f"{REPORT_DIR}/tables"),
        markdown=report(
            f"{REPORT_DIR}/report.md", caption="../report/markdown.rst", category="Summary"
        ),
        figures=[
            report(f"{REPORT_DIR}/figures/{name}.png", caption=f"../report/{name}.rst", category="Figures")
            for name in figure_titles(report_kinds())
        ],
    log:
        f"{EXP_DIR}/logs/report.log",
    params:
        min_fit_points=config["report"]["min_fit_points"],
        resamples=config["evaluation"]["bootstrap_resamples"],
        bootstrap_seed=config["evaluation"]["bootstrap_seed"],
        experiment=EXPERIMENT,
        kinds=as_json(report_kinds()),
        summaries=lambda w, input: " ".join(
            f"--{name.replace('_', '-')} {input[name]}"
            for name in ("summary", "scores", "plasticity_summary", "plasticity_scores", "continual_summary",
                         "continual_scores")
            if input[name]
        ),
    message:
        "Comparison report of {params.experiment}"
    conda:
        ENV
    shell:
        "fst report --experiment {params.experiment} --kinds {params.kinds:q} {params.summaries} "
        "--decomposition {input.decomposition} --decomposition-samples {input.decomposition_samples} "
        "--bootstrap-resamples {params.resamples} --bootstrap-seed {params.bootstrap_seed} --posthoc-evals {input.posthoc_evals} "
        "--posthoc-provenance {input.posthoc_provenance} --min-fit-points {params.min_fit_points} "
        "--tables {output.tables} --figures {output.figures} --markdown {output.markdown} 2> {log}"


rule sync_tracking:
    input:
        tracked=of_runs(f"{AFTER}/tracked.json"),
        report=rules.report.output.markdown,
        figures=rules.report.output.figures,
    output:
        f"{EXP_DIR}/tracking_sync.json",
    log:
        f"{EXP_DIR}/logs/tracking_sync.log",
    params:
        uri=TRACKING_URI_OPTION,
        results=lambda w, output: results_root(output[0]),
        experiment=EXPERIMENT,
    message:
        "MLflow: backfilling missed points and attaching the report"
    conda:
        ENV
    shell:
        "fst sync-tracking --tracked {input.tracked} --files {input.report} {input.figures} "
        "--results-dir {params.results} --experiment {params.experiment} {params.uri} --out {output} 2> {log}"
