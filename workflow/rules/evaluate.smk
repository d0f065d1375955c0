# Evaluation of the state after k rounds (k = 0 is the base model with the seed prompt).


rule evaluate:
    input:
        policy=policy_after,
        population=population_after,
        base_model=f"{EXP_DIR}/base_model",
        data=data_path(TRAIN_TASK),
        ood=[data_path(task) for task in config["tasks"]["ood"]],
    output:
        eval=f"{AFTER}/eval.parquet",
        samples=f"{AFTER}/samples.parquet",
        provenance=f"{AFTER}/provenance.json",
    log:
        f"{AFTER}/evaluate.log",
    benchmark:
        f"{AFTER}/benchmark.tsv"
    params:
        settings=as_json(
            sampling_settings()
            | {k: config["evaluation"][k] for k in ("k", "ood_problems")}
        ),
    message:
        "{wildcards.arm} seed {wildcards.seed}: evaluation after {wildcards.k} rounds"
    conda:
        GPU_ENV
    shell:
        "fst evaluate --policy {input.policy} --population {input.population} "
        "--base-model {input.base_model} --data {input.data} --ood {input.ood} "
        "--after-rounds {wildcards.k} --seed {wildcards.seed} --settings {params.settings:q} "
        "--out {output.eval} --samples {output.samples} --provenance {output.provenance} 2> {log}"
