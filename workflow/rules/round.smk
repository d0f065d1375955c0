# One round of one run: fast (prompts) -> rollout -> score -> slow (CISPO). Paper order, per arm.


rule fast:
    input:
        population=lambda w: population_before(w.round),
        policy=lambda w: policy_before(w.arm, w.round),
        base_model=f"{EXP_DIR}/base_model",
        data=lambda w: run_task(w.arm, w.round),
    output:
        population=f"{ROUND}/population.json",
        gepa_rollouts=f"{ROUND}/gepa_rollouts.parquet",
        report=f"{ROUND}/fast_report.json",
        provenance=f"{ROUND}/provenance/fast.json",
    log:
        f"{ROUND}/logs/fast.log",
    benchmark:
        f"{ROUND}/benchmarks/fast.tsv"
    params:
        settings=lambda w: as_json(fast_settings(w)),
        # GEPA's run folder stays outside the round's outputs, so a retried round resumes it.
        gepa_dir=f"{RUN}/gepa_state/round{{round}}",
        previous_gepa=previous_gepa_option,
        arm=lambda w: RUNS[w.arm].arm,
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: fast weights (GEPA)"
    conda:
        GPU_ENV
    shell:
        "fst fast --arm {params.arm} --round {wildcards.round} --seed {wildcards.seed} "
        "--population-in {input.population} --policy {input.policy} --base-model {input.base_model} "
        "--data {input.data} --settings {params.settings:q} --gepa-dir {params.gepa_dir} "
        "{params.previous_gepa} --out {output.population} --gepa-rollouts {output.gepa_rollouts} "
        "--report {output.report} --provenance {output.provenance} 2> {log}"


rule rollout:
    input:
        policy=lambda w: policy_before(w.arm, w.round),
        population=f"{ROUND}/population.json",
        data=lambda w: run_task(w.arm, w.round),
    output:
        rollouts=f"{ROUND}/rollouts.parquet",
        provenance=f"{ROUND}/provenance/rollout.json",
    log:
        f"{ROUND}/logs/rollout.log",
    benchmark:
        f"{ROUND}/benchmarks/rollout.tsv"
    params:
        settings=lambda w: as_json(rollout_settings(w)),
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: rollouts"
    conda:
        GPU_ENV
    shell:
        "fst rollout --policy {input.policy} --population {input.population} --data {input.data} "
        "--round {wildcards.round} --seed {wildcards.seed} --settings {params.settings:q} "
        "--out {output.rollouts} --provenance {output.provenance} 2> {log}"


rule score:
    input:
        rollouts=f"{ROUND}/rollouts.parquet",
        data=lambda w: run_task(w.arm, w.round),
    output:
        scored=f"{ROUND}/scored.parquet",
        provenance=f"{ROUND}/provenance/score.json",
    log:
        f"{ROUND}/logs/score.log",
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: rewards and feedback"
    conda:
        ENV
    shell:
        "fst score --rollouts {input.rollouts} --data {input.data} --out {output.scored} "
        "--provenance {output.provenance} 2> {log}"


rule slow:
    input:
        scored=f"{ROUND}/scored.parquet",
        policy=lambda w: policy_before(w.arm, w.round),
        base_model=f"{EXP_DIR}/base_model",
        # the KL reference (slow.kl_reference: base): the run's starting weights
        reference=lambda w: policy_before(w.arm, 0),
    output:
        policy=directory(f"{ROUND}/policy"),
        metrics=f"{ROUND}/slow_metrics.json",
        provenance=f"{ROUND}/provenance/slow.json",
    log:
        f"{ROUND}/logs/slow.log",
    benchmark:
        f"{ROUND}/benchmarks/slow.tsv"
    resources:
        # slow.gpus GPUs of one node for one task (profiles/default/ sets memory and runtime, not these)
        gpu=slow_resource("gpu"),
        nodes=slow_resource("nodes"),
    params:
        settings=lambda w: as_json(slow_settings(w)),
        launcher=slow_launcher,
        # Trainer checkpoints (optimizer state) live outside the round folders: Snakemake deletes
        # a failed job's outputs, and a rerun of this round resumes from the previous round's state.
        state_dir=f"{RUN}/trainer_state",
    message:
        "{wildcards.arm} seed {wildcards.seed} round {wildcards.round}: slow weights (CISPO)"
    conda:
        GPU_ENV
    shell:
        "{params.launcher} slow --scored {input.scored} --policy-in {input.policy} "
        "--base-model {input.base_model} --reference {input.reference} --state-dir {params.state_dir} --round {wildcards.round} --settings {params.settings:q} "
        "--out {output.policy} --metrics {output.metrics} --provenance {output.provenance} 2> {log}"
