rule base_model:
    output:
        directory(f"{EXP_DIR}/base_model"),
    log:
        f"{EXP_DIR}/logs/base_model.log",
    benchmark:
        f"{EXP_DIR}/benchmarks/base_model.tsv"
    params:
        source=config["model"]["source"],
        dtype=config["model"]["dtype"],
        provenance=f"{EXP_DIR}/provenance/base_model.json",
    message:
        "Preparing the base model from {params.source}"
    conda:
        ENV
    shell:
        "fst prepare-model --source {params.source:q} --dtype {params.dtype} --out {output} "
        "--provenance {params.provenance} 2> {log}"
