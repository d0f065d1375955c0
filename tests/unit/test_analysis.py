"""The report's analysis on synthetic curves with known answers."""

import numpy as np
import pandas as pd
import pytest

from fst import analysis

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
    assert "4 evaluation points" in fit["warning"] and "at least 5" in fit["warning"]


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
