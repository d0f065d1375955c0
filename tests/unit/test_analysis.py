"""The report's analysis on synthetic curves with known answers."""

import numpy as np
import pandas as pd
import pytest

from fst.report import analysis

STEPS_PER_ROUND, ROLLOUTS_PER_ROUND = 10, 100


def _curve(arm: str, values: list[float], gepa_calls: int = 0) -> pd.DataFrame:
    rounds = np.arange(len(values))
    steps = 0 if arm == "gepa" else STEPS_PER_ROUND
    rollouts = (0 if arm == "gepa" else ROLLOUTS_PER_ROUND) + gepa_calls
    return pd.DataFrame(
        {
            "arm": arm,
            "after_rounds": rounds,
            "rl_steps": rounds * steps,
            "policy_rollouts": rounds * rollouts,
            "value": values,
        }
    )


def _by_arm(table: pd.DataFrame) -> dict:
    return {row["arm"]: row for row in table.to_dict("records")}


def test_sample_efficiency_known_ratios_and_never_reached():
    curves = pd.concat(
        [
            _curve("rl", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.5]),  # peak 0.6 after 5 rounds
            _curve("fst", [0.1, 0.4, 0.61, 0.5, 0.7, 0.7, 0.7], gepa_calls=50),  # reaches it after 2
            _curve("gepa", [0.1, 0.2, 0.2, 0.3, 0.3, 0.3, 0.3], gepa_calls=60),  # never
        ]
    )
    rows = _by_arm(analysis.sample_efficiency(curves))
    assert rows["rl"]["target"] == pytest.approx(0.6)
    assert rows["rl"]["after_rounds"] == 5 and rows["rl"]["ratio_rl_steps"] == pytest.approx(1.0)
    fst = rows["fst"]
    assert fst["reached"] and fst["after_rounds"] == 2
    assert fst["ratio_rl_steps"] == pytest.approx(50 / 20)  # 2.5x fewer RL steps
    assert fst["ratio_policy_rollouts"] == pytest.approx(500 / 300)  # GEPA's calls shrink it to 1.67x
    assert not rows["gepa"]["reached"] and pd.isna(rows["gepa"]["after_rounds"])
    assert np.isnan(rows["gepa"]["ratio_rl_steps"]) and np.isnan(rows["gepa"]["ratio_policy_rollouts"])
    assert "never reached" in rows["gepa"]["note"]


def test_sample_efficiency_gepa_reaching_without_rl_steps_has_only_the_rollout_ratio():
    curves = pd.concat([_curve("rl", [0.1, 0.2, 0.4]), _curve("gepa", [0.1, 0.5, 0.5], gepa_calls=40)])
    gepa = _by_arm(analysis.sample_efficiency(curves))["gepa"]
    assert gepa["reached"] and gepa["after_rounds"] == 1
    assert np.isnan(gepa["ratio_rl_steps"])
    assert gepa["ratio_policy_rollouts"] == pytest.approx(200 / 40)
    assert "only the policy-rollout ratio" in gepa["note"]


def test_sample_efficiency_when_rl_never_improves_says_so():
    curves = pd.concat([_curve("rl", [0.3, 0.2, 0.1]), _curve("fst", [0.3, 0.5, 0.6])])
    rows = _by_arm(analysis.sample_efficiency(curves))
    assert rows["fst"]["after_rounds"] == 0
    assert np.isnan(rows["fst"]["ratio_rl_steps"])
    assert "never rose above its starting value" in rows["fst"]["note"]


def _summary(curves: pd.DataFrame, point: str = "default", seed: int = 0) -> pd.DataFrame:
    return curves.assign(
        point=point, seed=seed, metric="mean@2", task="arithmetic", setting="prompt:seed", n=32
    )


def test_sample_efficiency_table_has_mean_and_per_seed_rows():
    seed0 = _summary(pd.concat([_curve("rl", [0.1, 0.3, 0.5]), _curve("fst", [0.1, 0.6, 0.6])]), seed=0)
    seed1 = _summary(pd.concat([_curve("rl", [0.1, 0.5, 0.3]), _curve("fst", [0.1, 0.2, 0.4])]), seed=1)
    table = analysis.sample_efficiency_table(pd.concat([seed0, seed1]), "mean@2")
    assert sorted(table["seed"].unique()) == ["0", "1", "mean"]
    mean = _by_arm(table[table["seed"] == "mean"])
    assert mean["rl"]["target"] == pytest.approx(0.4)  # the mean curve is 0.1, 0.4, 0.4
    assert mean["fst"]["after_rounds"] == 1
    assert not _by_arm(table[table["seed"] == "1"])["fst"]["reached"]


def test_curves_interval_over_seeds():
    runs = pd.concat([_summary(_curve("rl", [0.1, v]), seed=s) for s, v in enumerate([0.2, 0.4, 0.6])])
    curve = analysis.curves(runs, "mean@2").set_index("after_rounds")
    assert curve.loc[1, "mean"] == pytest.approx(0.4)
    assert curve.loc[1, "seeds"] == 3
    half = 0.2 / np.sqrt(3) * 4.302653  # t(0.975, 2 dof)
    assert curve.loc[1, "ci95_high"] == pytest.approx(0.4 + half, rel=1e-4)
    one_seed = analysis.curves(runs[runs["seed"] == 0], "mean@2")
    assert one_seed["ci95_low"].isna().all()


def test_sigmoid_fit_recovers_known_parameters():
    truth = {"r0": 0.1, "a": 0.8, "b": 1.5, "c_mid": 500.0}
    compute = np.linspace(0, 3000, 13)
    noise = np.random.default_rng(0).normal(0, 0.003, compute.size)
    reward = analysis.sigmoid(compute, **truth) + noise
    fit = analysis.fit_ceiling(compute, reward)
    assert fit["warning"] == ""
    assert fit["ceiling"] == pytest.approx(truth["a"], abs=0.02)
    assert fit["r0"] == pytest.approx(truth["r0"], abs=0.02)
    assert fit["c_mid"] == pytest.approx(truth["c_mid"], rel=0.1)
    assert fit["b"] == pytest.approx(truth["b"], rel=0.15)
    assert fit["rmse"] < 0.01


def test_sigmoid_fit_refuses_too_few_points():
    fit = analysis.fit_ceiling([0, 100, 200, 300], [0.1, 0.2, 0.3, 0.35], min_points=5)
    assert np.isnan(fit["ceiling"])
    assert "4 evaluation rounds" in fit["warning"] and "at least 5" in fit["warning"]


def test_sigmoid_is_r0_at_zero_compute():
    assert analysis.sigmoid([0.0], 0.2, 0.9, 2.0, 10.0)[0] == pytest.approx(0.2)


def test_drift_at_matched_reward():
    rows = []
    for arm, rewards, kls in [
        ("rl", [0.1, 0.3, 0.5], [0.0, 0.02, 0.05]),
        ("fst", [0.1, 0.5, 0.7], [0.0, 0.01, 0.03]),
        ("gepa", [0.1, 0.6, 0.6], [0.0, 0.0, 0.0]),
    ]:
        curve = _curve(arm, rewards)
        rows += [_summary(curve), _summary(curve.assign(value=kls)).assign(metric="kl_to_base")]
    drift = _by_arm(analysis.drift_table(pd.concat(rows), "mean@2"))
    assert set(drift) == {"rl", "fst"}  # gepa trains no weights: no drift to compare
    assert drift["rl"]["matched_reward"] == pytest.approx(0.5)  # min of the peaks 0.5 and 0.7
    assert drift["fst"]["after_rounds"] == 1 and drift["fst"]["kl_to_base"] == pytest.approx(0.01)
    assert drift["rl"]["kl_to_base"] == pytest.approx(0.05)
    assert drift["fst"]["kl_reduction_vs_rl"] == pytest.approx(0.8)
    assert drift["fst"]["final_kl_to_base"] == pytest.approx(0.03)


def test_ood_change_from_start_to_final():
    curve = _curve("rl", [0.5, 0.4, 0.25])
    summary = _summary(curve).assign(metric="greedy_accuracy", task="claims", setting="none", n=16)
    (row,) = analysis.ood_table(summary).to_dict("records")
    assert (row["start"], row["final"], row["change"]) == pytest.approx((0.5, 0.25, -0.25))


def test_decomposition_gain_over_base_and_seed_prompt():
    cells = pd.DataFrame(
        [
            {"point": "default", "seed": s, "weights": w, "prompt": p, "value": v}
            for s, shift in [(0, 0.0), (1, 0.1)]
            for (w, p, v) in [
                ("base", "seed", 0.1),
                ("base", "evolved", 0.2),
                ("trained", "seed", 0.3),
                ("trained", "evolved", 0.5),
            ]
            for v in [v + shift]
        ]
    )
    table = analysis.decomposition_table(cells).set_index(["weights", "prompt"])
    assert table.loc[("trained", "evolved"), "mean"] == pytest.approx(0.55)
    assert table.loc[("trained", "evolved"), "gain_over_base_seed"] == pytest.approx(0.4)
    assert table.loc[("base", "seed"), "count"] == 2


def test_swept_k_becomes_one_validation_metric():
    a = _summary(_curve("rl", [0.1, 0.2]), point="evaluation.k~2")
    b = _summary(_curve("rl", [0.1, 0.3]), point="evaluation.k~4").assign(metric="mean@4")
    summary, metric = analysis.with_validation_metric(pd.concat([a, b]))
    assert metric == "mean@k"
    assert set(analysis.curves(summary, metric)["point"]) == {"evaluation.k~2", "evaluation.k~4"}
    single, name = analysis.with_validation_metric(a)
    assert name == "mean@2" and single is a


def test_posthoc_gepa_compared_with_final_rl_and_fst():
    summary = pd.concat(
        [
            _summary(_curve("rl", [0.1, 0.3, 0.4])),
            _summary(_curve("fst", [0.1, 0.4, 0.5], gepa_calls=20)),
        ]
    )
    posthoc = pd.DataFrame({"point": ["default"], "seed": [0], "value": [0.45], "gepa_calls": [30]})
    (row,) = analysis.posthoc_table(summary, "mean@2", posthoc).to_dict("records")
    assert (row["rl"], row["rl→gepa"], row["fst"]) == pytest.approx((0.4, 0.45, 0.5))
    assert row["rl_rollouts"] == 200 and row["rl→gepa_rollouts"] == 230 and row["fst_rollouts"] == 240


def test_kl_at_matched_reward_is_interpolated_where_the_path_crosses_the_level():
    # rewards 0.1 -> 0.3 -> 0.7 with KL 0 -> 0.01 -> 0.05: the level 0.5 is crossed halfway to round 2
    reached, kl = analysis.kl_at_reward([0.1, 0.3, 0.7], [0.0, 0.01, 0.05], 0.5)
    assert reached == 2 and kl == pytest.approx(0.03)
    assert analysis.kl_at_reward([0.1, 0.5, 0.7], [0.0, 0.01, 0.05], 0.5) == (1, pytest.approx(0.01))
    assert analysis.kl_at_reward([0.6, 0.5], [0.0, 0.01], 0.5) == (0, 0.0)


def test_ceiling_guard_counts_evaluation_rounds_not_compute_values_pooled_over_seeds():
    """3 rounds x 3 seeds: fst's GEPA calls differ per seed, so its compute values are 10 distinct
    numbers where rl's are 4; both have 4 evaluation rounds, and both are refused below 5."""
    runs = []
    for seed in range(3):
        runs.append(_summary(_curve("rl", [0.1, 0.3, 0.4, 0.45]), seed=seed))
        runs.append(_summary(_curve("fst", [0.1, 0.4, 0.5, 0.55], gepa_calls=10 + seed), seed=seed))
    table = analysis.ceiling_table(pd.concat(runs), "mean@2", min_points=5).set_index("arm")
    assert list(table["points"]) == [4, 4]
    assert table["ceiling"].isna().all()
    assert all("4 evaluation rounds" in warning for warning in table["warning"])
    longer = []
    for seed in range(3):
        values = [0.1, 0.3, 0.4, 0.45, 0.47, 0.48]
        longer.append(_summary(_curve("rl", values), seed=seed))
        longer.append(_summary(_curve("fst", values, gepa_calls=10 + seed), seed=seed))
    fitted = analysis.ceiling_table(pd.concat(longer), "mean@2", min_points=5).set_index("arm")
    assert list(fitted["points"]) == [6, 6]
    assert fitted["ceiling"].notna().all()


BOOTSTRAP = analysis.Bootstrap(resamples=500, seed=0)


def _scores(arm: str, after: int, values: list[float], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"point": "default", "arm": arm, "seed": seed, "after_rounds": after,
                         "task": "arithmetic", "problem_id": [f"p{i}" for i in range(len(values))],
                         "score": values})


def test_paired_differences_say_which_are_inside_the_noise():
    noisy = [0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 1.0]
    shifted = [min(v + 0.5, 1.0) for v in noisy]
    flipped = noisy[1:] + noisy[:1]  # same mean, other problems: a zero-mean paired difference
    scores = pd.concat([
        _scores("rl", 0, noisy), _scores("fst", 0, noisy), _scores("gepa", 0, noisy),
        _scores("rl", 1, noisy), _scores("fst", 1, shifted), _scores("gepa", 1, flipped),
    ])
    cells = pd.concat([
        _scores("fst", 1, noisy).assign(weights="base", prompt="seed"),
        _scores("fst", 1, shifted).assign(weights="trained", prompt="evolved"),
    ])
    table = analysis.differences_table(scores, cells, BOOTSTRAP).set_index(["comparison", "after_rounds"])
    same = table.loc[("fst − rl", 0)]
    assert same["difference"] == 0 and same["inside_noise"] and same["verdict"] == "inside the noise"
    better = table.loc[("fst − rl", 1)]
    assert better["difference"] == pytest.approx(np.mean(shifted) - np.mean(noisy))
    assert better["ci95_low"] > 0 and not better["inside_noise"] and better["verdict"] == "outside the noise"
    around_zero = table.loc[("gepa − rl", 1)]
    assert around_zero["ci95_low"] < 0 < around_zero["ci95_high"] and around_zero["inside_noise"]
    assert not table.loc[("fst: final − start", 1)]["inside_noise"]
    assert table.loc[("rl: final − start", 1)]["inside_noise"]
    (cell,) = [c for c, _ in table.index if c.startswith("decomposition")]
    assert "trained weights + evolved prompt" in cell and not table.loc[cell].iloc[0]["inside_noise"]
    again = analysis.differences_table(scores, cells, BOOTSTRAP).set_index(["comparison", "after_rounds"])
    pd.testing.assert_frame_equal(table, again)  # a fixed bootstrap seed: reproducible intervals


def test_problem_intervals_bracket_each_curve_point():
    scores = pd.concat([_scores("rl", 0, [0.0, 1.0, 0.5, 1.0]), _scores("rl", 1, [1.0, 1.0, 0.5, 1.0])])
    table = analysis.problem_intervals(scores, BOOTSTRAP).set_index("after_rounds")
    assert table.loc[0, "problems_ci95_low"] < 0.625 < table.loc[0, "problems_ci95_high"]
    assert table.loc[1, "problems_ci95_high"] <= 1.0


def test_test_rows_stay_out_of_the_validation_curves_and_form_the_test_table():
    validation = _summary(_curve("rl", [0.1, 0.5, 0.3])).assign(split="val")
    test = pd.DataFrame({"point": "default", "arm": "rl", "seed": 0, "split": "test",
                         "selection": ["final", "selected"], "after_rounds": [2, 1], "rl_steps": [20, 10],
                         "policy_rollouts": [200, 100], "task": "arithmetic", "setting": "prompt:seed",
                         "metric": "mean@2", "value": [0.25, 0.4], "n": 32, "ci95_low": [0.1, 0.2],
                         "ci95_high": [0.4, 0.6], "val_value": [0.3, 0.5]})
    summary = pd.concat([validation, test])
    rows, metric = analysis.with_validation_metric(summary)
    assert set(rows["split"]) == {"val"}
    assert list(analysis.curves(rows, metric)["mean"]) == pytest.approx([0.1, 0.5, 0.3])
    table = analysis.test_table(summary).set_index("selection")
    assert table.loc["selected", "after_rounds"] == "1" and table.loc["selected", "test_value"] == 0.4
    assert table.loc["final", "val_value"] == 0.3 and table.loc["final", "ci95_high"] == 0.4
