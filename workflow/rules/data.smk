rule tasks:
    input:
        dataset_files,
    output:
        data=data_path("{task}"),
        provenance=f"{EXP_DIR}/provenance/data_{{task}}.json",
    log:
        f"{EXP_DIR}/logs/data_{{task}}.log",
    params:
        seed=config["tasks"]["seed"],
        sizes=as_json(config["tasks"]["sizes"]),
        data_file=lambda w: f"--data-file {TASK_FILES[w.task]}" if w.task in TASK_FILES else "",
        source=dataset_source_option,
    message:
        "Building the {wildcards.task} problems (train/val/test)"
    conda:
        ENV
    shell:
        "fst tasks --task {wildcards.task} --seed {params.seed} --sizes {params.sizes:q} "
        "{params.data_file} {params.source} --out {output.data} --provenance {output.provenance} 2> {log}"


rule seed_population:
    output:
        f"{EXP_DIR}/{{point}}/population_seed.json",
    log:
        f"{EXP_DIR}/{{point}}/logs/population_seed.log",
    params:
        prompt=lambda w: point_config(w)["prompts"]["seed"],
        provenance=f"{EXP_DIR}/{{point}}/provenance/population_seed.json",
    message:
        "Writing the seed population (Φ_0)"
    conda:
        ENV
    shell:
        "fst seed-population --prompt {params.prompt:q} --out {output} "
        "--provenance {params.provenance} 2> {log}"
