# Kind plasticity: phase-B runs of plain RL on plasticity.task (folders plasticity-from-<init>/), each
# starting from the base model or a main run's final weights (common.smk's policy_before), made of the
# rounds of round.smk and the evaluations of evaluate.smk. Here: the kind's own summary, read by the
# report's plasticity section.


use rule summary as summary_plasticity with:
    input:
        evals=of_runs(f"{AFTER}/eval.parquet", "plasticity"),
        tests=[],
        samples=of_runs(f"{AFTER}/samples.parquet", "plasticity"),
        round_provenance=all_round_provenance("plasticity"),
    output:
        summary=f"{EXP_DIR}/summary_plasticity.parquet",
        scores=f"{EXP_DIR}/scores_plasticity.parquet",
    log:
        f"{EXP_DIR}/logs/summary_plasticity.log",
    message:
        "Summarising the plasticity (phase B) runs of {EXPERIMENT}"
