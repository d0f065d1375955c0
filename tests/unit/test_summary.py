"""The summary table: runs read from the results tree (sweep points included), compute from provenance."""

import pandas as pd

from fst.artifacts import write_json
from fst.report.summary import collect


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
            ("slow", {"rl_steps": 3, "optimizer_steps": 2}),
        ]:
            provenance.append(run / f"round{r}/provenance/{stage}.json")
            write_json({"counts": counts}, provenance[-1])
    table = collect(evals, provenance).sort_values("after_rounds")
    assert set(table["point"]) == {"slow.lr~0.1/fast.population_size~2"}
    assert set(table["arm"]) == {"fst"} and set(table["seed"]) == {3}
    assert list(table["rl_steps"]) == [0, 3, 6]
    assert list(table["policy_rollouts"]) == [0, 37, 75]  # RL rollouts + GEPA metric calls, not reflection


def test_collect_adds_the_test_split_and_problem_scores_come_from_the_samples(tmp_path):
    from fst.report.summary import problem_scores

    run = tmp_path / "results/exp/default/rl/seed0"
    (run / "eval/after1").mkdir(parents=True)
    pd.DataFrame({"after_rounds": [1], "task": ["arithmetic"], "setting": ["prompt:seed"],
                  "metric": ["mean@2"],
                  "value": [0.5], "n": [2]}).to_parquet(run / "eval/after1/eval.parquet")
    pd.DataFrame({"selection": ["final", "selected"], "after_rounds": [1, 1], "split": ["test", "test"],
                  "task": ["arithmetic"] * 2, "setting": ["prompt:seed"] * 2, "metric": ["mean@2"] * 2,
                  "value": [0.25, 0.25], "n": [4, 4]}).to_parquet(run / "eval/test.parquet")
    write_json({"counts": {"rollouts": 8, "rl_steps": 2}}, run / "round0/provenance/rollout.json")
    table = collect([run / "eval/after1/eval.parquet"], [run / "round0/provenance/rollout.json"],
                    [run / "eval/test.parquet"])
    assert sorted(table["split"]) == ["test", "test", "val"]
    test = table[table["split"] == "test"].set_index("selection")
    assert test.loc["final", "rl_steps"] == 2 and test.loc["final", "arm"] == "rl"

    pd.DataFrame({"task": ["arithmetic"] * 4 + ["claims"], "problem_id": ["a", "a", "b", "b", "c"],
                  "setting": ["prompt:seed"] * 4 + ["none"], "reward": [1.0, 0.0, 1.0, 1.0, 1.0],
                  "completion_text": [""] * 5}).to_parquet(run / "eval/after1/samples.parquet")
    scores = problem_scores([run / "eval/after1/samples.parquet"])
    assert list(scores["problem_id"]) == ["a", "b"]  # validation only: no out-of-domain rows
    assert list(scores["score"]) == [0.5, 1.0] and set(scores["after_rounds"]) == {1}
