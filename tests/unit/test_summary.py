"""The summary table: runs read from the results tree (sweep points included), compute from provenance."""

import pandas as pd

from fst.artifacts import write_json
from fst.summary import collect


def test_collect_reads_sweep_points_and_counts_compute_from_provenance(tmp_path):
    run = tmp_path / "results/exp/slow.lr~0.1/fast.population_size~2/fst/seed3"
    evals = []
    for k in (0, 1, 2):
        path = run / f"eval/after{k}/eval.parquet"
        path.parent.mkdir(parents=True)
        pd.DataFrame(
            {
                "after_rounds": [k],
                "task": ["arithmetic"],
                "setting": ["prompt:seed"],
                "metric": ["mean@2"],
                "value": [0.1 * k],
                "n": [32],
            }
        ).to_parquet(path)
        evals.append(path)
    provenance = []
    for r in (0, 1):
        for stage, counts in [
            ("fast", {"metric_calls": 5 + r, "reflection_calls": 2}),
            ("rollout", {"rollouts": 32}),
            ("slow", {"optimizer_steps": 3}),
        ]:
            provenance.append(run / f"round{r}/provenance/{stage}.json")
            write_json({"counts": counts}, provenance[-1])
    table = collect(evals, provenance).sort_values("after_rounds")
    assert set(table["point"]) == {"slow.lr~0.1/fast.population_size~2"}
    assert set(table["arm"]) == {"fst"} and set(table["seed"]) == {3}
    assert list(table["rl_steps"]) == [0, 3, 6]
    assert list(table["policy_rollouts"]) == [0, 37, 75]  # RL rollouts + GEPA metric calls, not reflection
