# MLflow mirror of each evaluation point, and the experiment summary.


rule track:
    input:
        eval=f"{AFTER}/eval.parquet",
        slow_metrics=slow_metrics_before,
        round_provenance=round_provenance_before,
        previous=previous_tracked,
    output:
        f"{AFTER}/tracked.json",
    log:
        f"{AFTER}/track.log",
    params:
        slow=lambda w, input: f"--slow-metrics {input.slow_metrics}" if input.slow_metrics else "",
        uri=f"--uri {config['tracking']['uri']}" if config["tracking"]["uri"] else "",
        config=as_json(config),
        steps=config["slow"]["steps_per_round"],
        results=lambda w, output: results_root(output[0]),
        experiment=EXPERIMENT,
    message:
        "{wildcards.arm} seed {wildcards.seed}: MLflow mirror after {wildcards.k} rounds"
    conda:
        ENV
    shell:
        "fst track --eval {input.eval} {params.slow} --round-provenance {input.round_provenance} "
        "--results-dir {params.results} --experiment {params.experiment} --point {wildcards.point} "
        "--arm {wildcards.arm} --seed {wildcards.seed} --after-rounds {wildcards.k} "
        "--steps-per-round {params.steps} --params {params.config:q} {params.uri} "
        "--out {output} 2> {log}"


rule summary:
    input:
        evals=expand(
            f"{AFTER}/eval.parquet",
            point=POINTS,
            arm=config["arms"],
            seed=config["seeds"],
            k=range(config["rounds"] + 1),
        ),
        round_provenance=all_round_provenance(),
    output:
        table=f"{EXP_DIR}/summary.parquet",
        plot=report(
            f"{EXP_DIR}/reward_curve.png",
            caption="../report/reward_curve.rst",
            category="Curves",
        ),
    log:
        f"{EXP_DIR}/logs/summary.log",
    params:
        steps=config["slow"]["steps_per_round"],
    message:
        "Summarising {EXPERIMENT}"
    conda:
        ENV
    shell:
        "fst summarize --evals {input.evals} --round-provenance {input.round_provenance} "
        "--steps-per-round {params.steps} --out {output.table} --plot {output.plot} 2> {log}"
