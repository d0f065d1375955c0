"""The paper's questions answered from an experiment's summary table (fst.summary.collect).

Sample efficiency, ceiling, drift at matched reward and out-of-domain accuracy, per sweep point, per
seed and on the mean over seeds. Pure pandas/numpy/scipy on files already written: every number here
can be recomputed from the evaluation and provenance files it came from.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

REFERENCE_ARM = "rl"
STEP_AXES = ("rl_steps", "policy_rollouts")
_TOLERANCE = 1e-9  # "reaches" a target: at least the target, up to float noise in a mean


def _t_quantile(n: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) if n > 1 else float("nan")


def with_validation_metric(summary: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The summary and the name of its validation metric (mean@k).

    When evaluation.k is swept, points carry different names (mean@2, mean@4): they become one
    metric "mean@k" so that points compare, each point keeping its own k.
    """
    names = sorted(m for m in summary["metric"].unique() if m.startswith("mean@"))
    if not names:
        raise ValueError("the summary has no validation mean@k rows: were the evaluations written?")
    if len(names) == 1:
        return summary, names[0]
    return summary.assign(metric=summary["metric"].where(~summary["metric"].isin(names), "mean@k")), "mean@k"


def curves(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (point, arm, after_rounds): the metric's mean over seeds with a 95% t-interval.

    The interval is NaN with one seed. Step axes are averaged over seeds (GEPA's metric calls can
    differ slightly between seeds).
    """
    rows = summary[summary["metric"] == metric]
    group = rows.groupby(["point", "arm", "after_rounds"])
    table = group.agg(
        rl_steps=("rl_steps", "mean"),
        policy_rollouts=("policy_rollouts", "mean"),
        mean=("value", "mean"),
        std=("value", "std"),
        seeds=("seed", "nunique"),
    ).reset_index()
    half = table["std"] / np.sqrt(table["seeds"]) * table["seeds"].map(_t_quantile)
    table["ci95_low"], table["ci95_high"] = table["mean"] - half, table["mean"] + half
    table.insert(3, "metric", metric)
    return table


@dataclass
class Reach:
    """Where a curve's running maximum first reaches a target (None: never)."""

    after_rounds: int | None
    rl_steps: float | None
    policy_rollouts: float | None


def first_reach(curve: pd.DataFrame, target: float) -> Reach:
    """First evaluation point (in round order) whose value is at least `target`.

    The running maximum first reaches a target exactly where the curve itself first does, so no
    interpolation: points between evaluations are unknown.
    """
    ordered = curve.sort_values("after_rounds")
    hit = ordered[ordered["value"] >= target - _TOLERANCE]
    if hit.empty:
        return Reach(None, None, None)
    row = hit.iloc[0]
    return Reach(int(row["after_rounds"]), float(row["rl_steps"]), float(row["policy_rollouts"]))


def _ratio(reference: float | None, other: float | None) -> float:
    if reference is None or other is None or other <= 0:
        return float("nan")
    return reference / other


def sample_efficiency(curve: pd.DataFrame, reference: str = REFERENCE_ARM) -> pd.DataFrame:
    """Each arm against the reference arm's peak: when it gets there, and the speed-up ratios.

    `curve` has columns arm, after_rounds, rl_steps, policy_rollouts, value (one curve per arm).
    ratio_<axis> = the reference's cost to its own peak / the arm's cost to reach that peak, so 3.0
    means three times fewer RL steps (or policy rollouts). NaN where it is undefined, with the
    reason in `note`: never reached, or reached at zero cost (e.g. arm gepa takes no RL steps).
    """
    ref_curve = curve[curve["arm"] == reference]
    if ref_curve.empty:
        raise ValueError(f"sample efficiency needs the reference arm '{reference}'")
    peak = float(ref_curve["value"].max())
    ref = first_reach(ref_curve, peak)
    start = float(ref_curve.sort_values("after_rounds")["value"].iloc[0])
    rows = []
    for arm, arm_curve in curve.groupby("arm", sort=True):
        reach = first_reach(arm_curve, peak)
        row = {"arm": arm, "target": peak, "reached": reach.after_rounds is not None, **asdict(reach)}
        for axis in STEP_AXES:
            row[f"ratio_{axis}"] = _ratio(getattr(ref, axis), getattr(reach, axis))
        row["note"] = _efficiency_note(arm, reference, reach, peak, start)
        rows.append(row)
    return pd.DataFrame(rows).astype({"after_rounds": "Int64"})


def _efficiency_note(arm: str, reference: str, reach: Reach, peak: float, start: float) -> str:
    if peak <= start + _TOLERANCE:
        return f"{reference} never rose above its starting value: no speed-up can be measured"
    if reach.after_rounds is None:
        return f"never reached {reference}'s peak {peak:.3f}"
    if reach.after_rounds == 0:
        return "at or above the target before any training"
    if not reach.rl_steps:
        return "reached without RL steps: only the policy-rollout ratio is defined"
    return ""


def sample_efficiency_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """sample_efficiency per point, for every seed and for the mean over seeds (seed = "mean")."""
    rows = summary[summary["metric"] == metric]
    frames = []
    for point, point_rows in rows.groupby("point", sort=True):
        if REFERENCE_ARM not in set(point_rows["arm"]):
            continue
        per_seed = [(str(seed), seed_rows) for seed, seed_rows in point_rows.groupby("seed")]
        mean = (
            point_rows.groupby(["arm", "after_rounds"])[["rl_steps", "policy_rollouts", "value"]]
            .mean()
            .reset_index()
        )
        for seed, curve in [("mean", mean), *per_seed]:
            table = sample_efficiency(curve)
            table.insert(0, "seed", seed)
            table.insert(0, "point", point)
            frames.append(table)
    if not frames:  # no arm rl to compare against
        return pd.DataFrame(
            columns=[
                "point",
                "seed",
                "arm",
                "target",
                "reached",
                "after_rounds",
                *(f"ratio_{axis}" for axis in STEP_AXES),
                "note",
            ]
        )
    return pd.concat(frames, ignore_index=True)


def sigmoid(compute, r0: float, a: float, b: float, c_mid: float):
    """R(C) = R0 + (A − R0) / (1 + (C_mid / C)^B); R(0) = R0 (the paper's 4-parameter ceiling fit)."""
    compute = np.asarray(compute, dtype=float)
    with np.errstate(divide="ignore", over="ignore"):
        scale = np.where(compute > 0, (c_mid / np.where(compute > 0, compute, 1.0)) ** b, np.inf)
    return r0 + (a - r0) / (1.0 + scale)


def fit_ceiling(compute, reward, min_points: int = 5) -> dict:
    """Fit the sigmoid; A is the ceiling. Too few distinct compute values give a warning, no number."""
    from scipy.optimize import curve_fit

    compute, reward = np.asarray(compute, dtype=float), np.asarray(reward, dtype=float)
    distinct = len(np.unique(compute))
    empty = {
        "r0": np.nan,
        "ceiling": np.nan,
        "b": np.nan,
        "c_mid": np.nan,
        "rmse": np.nan,
        "points": distinct,
    }
    if distinct < min_points:
        return empty | {
            "warning": f"{distinct} evaluation points; the 4-parameter fit needs at least "
            f"{min_points}: run more rounds (or evaluate more often) for a ceiling"
        }
    positive = compute[compute > 0]
    guess = [reward[compute == compute.min()].mean(), reward.max(), 1.0, float(np.median(positive))]
    bounds = ([-np.inf, -np.inf, 0.05, positive.min() / 100], [np.inf, np.inf, 20.0, positive.max() * 100])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(sigmoid, compute, reward, p0=guess, bounds=bounds, maxfev=20000)
    except (RuntimeError, ValueError) as error:
        return empty | {"warning": f"the sigmoid fit did not converge: {error}"}
    rmse = float(np.sqrt(np.mean((sigmoid(compute, *params) - reward) ** 2)))
    r0, ceiling, b, c_mid = map(float, params)
    warning = ""
    if c_mid > compute.max():
        warning = "the midpoint lies beyond the last evaluation: the ceiling is an extrapolation"
    return {
        "r0": r0,
        "ceiling": ceiling,
        "b": b,
        "c_mid": c_mid,
        "rmse": rmse,
        "points": distinct,
        "warning": warning,
    }


def ceiling_table(summary: pd.DataFrame, metric: str, min_points: int) -> pd.DataFrame:
    """The ceiling fit per (point, arm) on every seed's evaluation points, compute = policy rollouts."""
    rows = summary[summary["metric"] == metric]
    records = [
        {"point": point, "arm": arm, "axis": "policy_rollouts"}
        | fit_ceiling(runs["policy_rollouts"], runs["value"], min_points)
        for (point, arm), runs in rows.groupby(["point", "arm"], sort=True)
    ]
    return pd.DataFrame(records)


def reward_and_kl(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (point, arm, after_rounds): mean over seeds of the validation reward and of KL to base."""
    means = (
        summary[summary["metric"].isin([metric, "kl_to_base"])]
        .groupby(["point", "arm", "after_rounds", "metric"])["value"]
        .mean()
        .unstack("metric")
        .reset_index()
    )
    return means.rename(columns={metric: "reward"})


def kl_at_reward(rewards, kls, level: float) -> tuple[int, float]:
    """Index of the first evaluation point at or above `level`, and the KL where the path crosses it.

    Between the last point below the level and the first at or above it, KL is interpolated linearly
    in reward: an arm that overshoots the level in one round is not charged the KL of the overshoot.
    """
    reached = int(np.argmax(np.asarray(rewards) >= level - _TOLERANCE))
    if reached == 0 or rewards[reached] <= level + _TOLERANCE:
        return reached, float(kls[reached])
    r0, r1, k0, k1 = rewards[reached - 1], rewards[reached], kls[reached - 1], kls[reached]
    return reached, float(k0 + (k1 - k0) * (level - r0) / (r1 - r0))


def drift_table(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """KL to the base model at matched validation reward, per point and arm (means over seeds).

    The matched level is the highest reward that every weight-training arm reaches after training
    (the lowest of their peaks over rounds >= 1); each arm's KL is taken where its path of evaluation
    points first crosses that level (kl_at_reward).
    kl_reduction_vs_rl = 1 − KL_arm / KL_rl (0.7 = 70% less drift).
    """
    records = []
    for point, rows in reward_and_kl(summary, metric).groupby("point", sort=True):
        trained = rows[(rows["after_rounds"] > 0) & (rows["arm"] != "gepa")].sort_values("after_rounds")
        if trained.empty:
            continue
        level = float(trained.groupby("arm")["reward"].max().min())
        point_records = []
        for arm in sorted(trained["arm"].unique()):
            path = rows[rows["arm"] == arm].sort_values("after_rounds")
            rewards, kls = path["reward"].to_numpy(), path["kl_to_base"].to_numpy()
            reached, kl = kl_at_reward(rewards, kls, level)
            point_records.append(
                {
                    "point": point,
                    "arm": arm,
                    "matched_reward": level,
                    "after_rounds": int(path["after_rounds"].iloc[reached]),
                    "kl_to_base": kl,
                    "final_kl_to_base": float(path["kl_to_base"].iloc[-1]),
                }
            )
        reference = {r["arm"]: r["kl_to_base"] for r in point_records}.get(REFERENCE_ARM)
        for record in point_records:
            record["kl_reduction_vs_rl"] = 1 - record["kl_to_base"] / reference if reference else float("nan")
        records += point_records
    return pd.DataFrame(records)


def ood_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Out-of-domain greedy accuracy without any system prompt: start, final and change, per arm."""
    rows = summary[summary["metric"] == "greedy_accuracy"]
    if rows.empty:
        return pd.DataFrame()
    per_point = rows.groupby(["point", "arm", "task", "after_rounds"])["value"].mean().reset_index()
    records = []
    for (point, arm, task), runs in per_point.groupby(["point", "arm", "task"], sort=True):
        runs = runs.sort_values("after_rounds")
        start, final = float(runs["value"].iloc[0]), float(runs["value"].iloc[-1])
        records.append(
            {
                "point": point,
                "arm": arm,
                "task": task,
                "start": start,
                "final": final,
                "change": final - start,
                "after_rounds": int(runs["after_rounds"].iloc[-1]),
                "problems": int(rows["n"].iloc[0]),
            }
        )
    return pd.DataFrame(records)


def decomposition_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of each {weights} x {prompt} cell, with the gain over base weights + seed prompt."""
    table = cells.groupby(["point", "weights", "prompt"])["value"].agg(["mean", "std", "count"]).reset_index()
    base = table[(table["weights"] == "base") & (table["prompt"] == "seed")].set_index("point")["mean"]
    table["gain_over_base_seed"] = table["mean"] - table["point"].map(base)
    return table


def posthoc_table(summary: pd.DataFrame, metric: str, posthoc: pd.DataFrame) -> pd.DataFrame:
    """RL→GEPA (GEPA run once on arm rl's final checkpoint) against rl and fst, mean over seeds.

    `posthoc` has point, seed, value (the post-hoc evaluation) and gepa_calls (its metric calls).
    Rollouts: the whole rl run plus the post-hoc GEPA round's calls.
    """
    if posthoc.empty:
        return pd.DataFrame()
    final = summary[
        (summary["metric"] == metric) & (summary["after_rounds"] == summary["after_rounds"].max())
    ]
    finals = final.groupby(["point", "arm"]).agg(
        value=("value", "mean"), rollouts=("policy_rollouts", "mean")
    )
    records = []
    for point, rows in posthoc.groupby("point", sort=True):
        record = {"point": point, "rl→gepa": rows["value"].mean()}
        for arm in ("rl", "fst", "gepa"):
            if (point, arm) in finals.index:
                record[arm] = finals.loc[(point, arm), "value"]
                record[f"{arm}_rollouts"] = finals.loc[(point, arm), "rollouts"]
        record["rl→gepa_rollouts"] = record.get("rl_rollouts", 0) + rows["gepa_calls"].mean()
        record["seeds"] = rows["seed"].nunique()
        records.append(record)
    return pd.DataFrame(records)
