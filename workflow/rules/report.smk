# MLflow mirror of each evaluation point, and the experiment summary.


def slow_metrics_before(wildcards):
    k = int(wildcards.k)
    return [ROUND.replace("{round}", str(k - 1)) + "/slow_metrics.json"] if k else []


def rollout_provenance_before(wildcards):
    return [
        ROUND.replace("{round}", str(r)) + "/provenance/rollout.json" for r in range(int(wildcards.k))
    ]


def previous_tracked(wildcards):
    """Mirror points of one run in order: MLflow calls for one run key must not overlap."""
    k = int(wildcards.k)
    return [AFTER.replace("{k}", str(k - 1)) + "/tracked.json"] if k else []


rule track:
    input:
        eval=AFTER + "/eval.parquet",
        slow_metrics=slow_metrics_before,
        rollout_provenance=rollout_provenance_before,
        previous=previous_tracked,
    output:
        AFTER + "/tracked.json",
    log:
        AFTER + "/track.log",
    params:
        slow=lambda w, input: f"--slow-metrics {input.slow_metrics}" if input.slow_metrics else "",
        uri=f"--uri {config['tracking']['uri']}" if config["tracking"]["uri"] else "",
        config=as_json(config),
        steps=config["slow"]["steps_per_round"],
    message:
        "{wildcards.arm} seed {wildcards.seed}: MLflow mirror after {wildcards.k} rounds"
    conda:
        ENV
    shell:
        "fst track --eval {input.eval} {params.slow} --rollout-provenance {input.rollout_provenance} "
        "--results-dir {RESULTS} --experiment {EXPERIMENT} --point {wildcards.point} "
        "--arm {wildcards.arm} --seed {wildcards.seed} --after-rounds {wildcards.k} "
        "--steps-per-round {params.steps} --params {params.config:q} {params.uri} "
        "--out {output} 2> {log}"


rule summary:
    input:
        evals=expand(
            AFTER + "/eval.parquet",
            point=POINTS,
            arm=config["arms"],
            seed=config["seeds"],
            k=range(config["rounds"] + 1),
        ),
        rollout_provenance=expand(
            ROUND + "/provenance/rollout.json",
            point=POINTS,
            arm=config["arms"],
            seed=config["seeds"],
            round=range(config["rounds"]),
        ),
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
        "fst summarize --evals {input.evals} --rollout-provenance {input.rollout_provenance} "
        "--steps-per-round {params.steps} --out {output.table} --plot {output.plot} 2> {log}"
