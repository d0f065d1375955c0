# One round of one run: fast (prompts) -> rollout -> score -> slow (CISPO). Paper order, per arm.


rule fast:
    input:
        population=lambda w: population_before(w.round),
    output:
        population=ROUND + "/population.json",
        provenance=ROUND + "/provenance/fast.json",
    log:
        ROUND + "/logs/fast.log",
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: fast weights"
    conda:
        ENV
    shell:
        "fst fast --arm {wildcards.arm} --round {wildcards.round} --seed {wildcards.seed} "
        "--population-in {input.population} --out {output.population} "
        "--provenance {output.provenance} 2> {log}"


rule rollout:
    input:
        policy=lambda w: policy_before(w.round),
        population=ROUND + "/population.json",
        data=data_path(TRAIN_TASK),
    output:
        rollouts=ROUND + "/rollouts.parquet",
        provenance=ROUND + "/provenance/rollout.json",
    log:
        ROUND + "/logs/rollout.log",
    benchmark:
        ROUND + "/benchmarks/rollout.tsv"
    params:
        settings=as_json(rollout_settings()),
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: rollouts"
    conda:
        ENV
    shell:
        "fst rollout --policy {input.policy} --population {input.population} --data {input.data} "
        "--round {wildcards.round} --seed {wildcards.seed} --settings {params.settings:q} "
        "--out {output.rollouts} --provenance {output.provenance} 2> {log}"


rule score:
    input:
        rollouts=ROUND + "/rollouts.parquet",
        data=data_path(TRAIN_TASK),
    output:
        scored=ROUND + "/scored.parquet",
        provenance=ROUND + "/provenance/score.json",
    log:
        ROUND + "/logs/score.log",
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: rewards and feedback"
    conda:
        ENV
    shell:
        "fst score --rollouts {input.rollouts} --data {input.data} --out {output.scored} "
        "--provenance {output.provenance} 2> {log}"


rule slow:
    input:
        scored=ROUND + "/scored.parquet",
        policy=lambda w: policy_before(w.round),
        base_model=f"{EXP_DIR}/base_model",
    output:
        policy=directory(ROUND + "/policy"),
        metrics=ROUND + "/slow_metrics.json",
        provenance=ROUND + "/provenance/slow.json",
    log:
        ROUND + "/logs/slow.log",
    benchmark:
        ROUND + "/benchmarks/slow.tsv"
    params:
        settings=lambda w: as_json(slow_settings(w)),
        # Trainer checkpoints (optimizer state) live outside the round folders: Snakemake deletes
        # a failed job's outputs, and a rerun of this round resumes from the previous round's state.
        state_dir=RUN + "/trainer_state",
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: slow weights (CISPO)"
    conda:
        ENV
    shell:
        "fst slow --scored {input.scored} --policy-in {input.policy} --base-model {input.base_model} "
        "--state-dir {params.state_dir} --round {wildcards.round} --settings {params.settings:q} "
        "--out {output.policy} --metrics {output.metrics} --provenance {output.provenance} 2> {log}"
