# Evaluation of the state after k rounds (k = 0 is the base model with the seed prompt), the held-out
# test split at the end, and the report's evaluations. Every evaluation of a run samples with the one
# evaluation seed of that run (common random numbers). What one evaluation has drawn, another with the
# same weights, prompt, problems and seed reuses from SAMPLE_CACHE (fst.sample_cache; each stage's
# provenance says which draws it reused and which stage made them).


rule evaluate:
    input:
        policy=policy_after,
        population=population_after,
        seed_population=f"{EXP_DIR}/{{point}}/population_seed.json",
        base_model=f"{EXP_DIR}/base_model",
        data=eval_data("data"),
        tasks=eval_data("tasks"),
        ood=eval_data("ood"),
    output:
        eval=f"{AFTER}/eval.parquet",
        samples=f"{AFTER}/samples.parquet",
        provenance=f"{AFTER}/provenance.json",
    log:
        f"{AFTER}/evaluate.log",
    benchmark:
        f"{AFTER}/benchmark.tsv"
    resources:
        runtime=evaluation_runtime,
    params:
        settings=lambda w: as_json(evaluate_settings(w)),
        sample_cache=SAMPLE_CACHE,
    message:
        "{wildcards.arm} seed {wildcards.seed}: evaluation after {wildcards.k} rounds"
    conda:
        GPU_ENV
    shell:
        "fst evaluate --policy {input.policy} --population {input.population} "
        "--seed-population {input.seed_population} --base-model {input.base_model} --data {input.data} --tasks {input.tasks} --ood {input.ood} "
        "--after-rounds {wildcards.k} --seed {wildcards.seed} --settings {params.settings:q} "
        "--sample-cache {params.sample_cache} --out {output.eval} --samples {output.samples} "
        "--provenance {output.provenance} 2> {log}"


use rule evaluate as evaluate_posthoc with:
    input:
        policy=policy_after,
        population=lambda w: f"{round_dir(w.k)}/population.json",  # the post-hoc GEPA round's
        seed_population=f"{EXP_DIR}/{{point}}/population_seed.json",
        base_model=f"{EXP_DIR}/base_model",
        data=eval_data("data"),
        tasks=[],
        ood=eval_data("ood"),
        # arm rl's own final evaluation first: its seed-prompt samples, KL and out-of-domain draws are
        # this evaluation's too (shared, not drawn again)
        reuses=f"{AFTER}/eval.parquet",
    output:
        eval=f"{POSTHOC}/eval.parquet",
        samples=f"{POSTHOC}/samples.parquet",
        provenance=f"{POSTHOC}/provenance.json",
    log:
        f"{POSTHOC}/evaluate.log",
    benchmark:
        f"{POSTHOC}/benchmark.tsv"
    message:
        "{wildcards.arm} seed {wildcards.seed}: evaluation of post-hoc GEPA on the final checkpoint"


rule evaluate_test:
    input:
        # The selected round is known only once every validation evaluation is: the stage reads them
        # and evaluates the final round's and the selected round's weights and prompt on the test split.
        evals=test_eval_inputs("evals"),
        policies=test_eval_inputs("policies"),
        populations=test_eval_inputs("populations"),
        data=lambda w: data_path(RUNS[w.arm].task_after(RUNS[w.arm].rounds)),
    output:
        test=f"{RUN}/eval/test.parquet",
        samples=f"{RUN}/eval/test_samples.parquet",
        provenance=f"{RUN}/eval/provenance/test.json",
    log:
        f"{RUN}/eval/test.log",
    benchmark:
        f"{RUN}/eval/benchmarks/test.tsv"
    params:
        settings=lambda w: as_json(evaluate_settings(w)),
        sample_cache=SAMPLE_CACHE,
    message:
        "{wildcards.arm} seed {wildcards.seed}: held-out test split, final and selected rounds"
    conda:
        GPU_ENV
    shell:
        "fst evaluate-test --evals {input.evals} --policies {input.policies} "
        "--populations {input.populations} --data {input.data} --seed {wildcards.seed} "
        "--settings {params.settings:q} --sample-cache {params.sample_cache} --out {output.test} "
        "--samples {output.samples} "
        "--provenance {output.provenance} 2> {log}"


rule decompose:
    input:
        policy=f"{RUN}/round{config['rounds'] - 1}/policy",
        population=f"{RUN}/round{config['rounds'] - 1}/population.json",
        seed_population=f"{EXP_DIR}/{{point}}/population_seed.json",
        base_model=f"{EXP_DIR}/base_model",
        data=lambda w: data_path(RUNS[w.arm].task_after(RUNS[w.arm].rounds)),
        # the evaluations before and after training first: three of the four cells are their samples
        reuses=[f"{RUN}/eval/after0/eval.parquet", f"{RUN}/eval/after{config['rounds']}/eval.parquet"],
    output:
        table=f"{RUN}/eval/decomposition.parquet",
        samples=f"{RUN}/eval/decomposition_samples.parquet",
        provenance=f"{RUN}/eval/provenance/decomposition.json",
    log:
        f"{RUN}/eval/decomposition.log",
    benchmark:
        f"{RUN}/eval/benchmarks/decomposition.tsv"
    params:
        settings=lambda w: as_json(evaluate_settings(w)),
        sample_cache=SAMPLE_CACHE,
        after=config["rounds"],
    message:
        "{wildcards.arm} seed {wildcards.seed}: channel decomposition after {params.after} rounds"
    conda:
        GPU_ENV
    shell:
        "fst decompose --policy {input.policy} --base-model {input.base_model} "
        "--population {input.population} --seed-population {input.seed_population} --data {input.data} "
        "--after-rounds {params.after} --seed {wildcards.seed} --settings {params.settings:q} "
        "--sample-cache {params.sample_cache} --out {output.table} --samples {output.samples} "
        "--provenance {output.provenance} 2> {log}"
