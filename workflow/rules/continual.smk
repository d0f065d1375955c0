# Kind continual: one uninterrupted run per arm over continual.schedule (folders continual-<arm>/), made of
# the rounds of round.smk and the evaluations of evaluate.smk, which read the run's task per round from
# fst.kinds. Here: the kind's own summary, read by the report's continual section.


use rule summary as summary_continual with:
    input:
        evals=of_runs(f"{AFTER}/eval.parquet", "continual"),
        tests=[],
        samples=of_runs(f"{AFTER}/samples.parquet", "continual"),
        round_provenance=all_round_provenance("continual"),
    output:
        summary=f"{EXP_DIR}/summary_continual.parquet",
        scores=f"{EXP_DIR}/scores_continual.parquet",
    log:
        f"{EXP_DIR}/logs/summary_continual.log",
    message:
        "Summarising the continual runs of {EXPERIMENT}"
