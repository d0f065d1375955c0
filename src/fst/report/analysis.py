"""The paper's questions answered from an experiment's summary table (fst.report.summary.collect).

Sample efficiency, ceiling, drift at matched reward, out-of-domain accuracy, the held-out test split
and which differences are inside the noise, per sweep point, per seed and on the mean over seeds.
Pure pandas/numpy/scipy on files already written: every number here can be recomputed from the
evaluation and provenance files it came from.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from fst.evaluate import Bootstrap, bootstrap_interval

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
    if "split" in summary.columns and (summary["split"] == "test").any():
        summary = summary[summary["split"] != "test"]
    names = sorted(m for m in summary["metric"].unique() if m.startswith("mean@"))
    if not names:
        raise ValueError("the summary has no validation mean@k rows: were the evaluations written?")
    if len(names) == 1:
        return summary, names[0]
    return summary.assign(metric=summary["metric"].where(~summary["metric"].isin(names), "mean@k")), "mean@k"


def test_split(summary: pd.DataFrame) -> pd.DataFrame:
    """The held-out test rows of the summary (split "test"), mean@k named as in with_validation_metric."""
    if "split" not in summary.columns:
        return pd.DataFrame()
    rows = summary[summary["split"] == "test"]
    if rows["metric"].nunique() > 1:  # evaluation.k swept: mean@2, mean@4, ... become mean@k
        rows = rows.assign(metric="mean@k")
    return rows


def test_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Test mean@k per (point, arm, selection): mean over seeds, the rounds chosen and the per-run
    bootstrap interval over test problems (averaged over seeds when there are several)."""
    rows = test_split(summary)
    if rows.empty:
        return pd.DataFrame()
    group = rows.groupby(["point", "arm", "selection"], sort=True)
    table = group.agg(
        after_rounds=("after_rounds", lambda r: ",".join(str(v) for v in sorted(set(r)))),
        val_value=("val_value", "mean"),
        test_value=("value", "mean"),
        ci95_low=("ci95_low", "mean"),
        ci95_high=("ci95_high", "mean"),
        seeds=("seed", "nunique"),
        problems=("n", "first"),
    ).reset_index()
    return table


CURVE_KEYS = ("point", "arm", "after_rounds")


def curves(summary: pd.DataFrame, metric: str, keys: tuple[str, ...] = CURVE_KEYS) -> pd.DataFrame:
    """Per (point, arm, after_rounds), or other `keys` (e.g. with task): the metric's mean over seeds
    with a 95% t-interval.

    The interval is NaN with one seed. Step axes are averaged over seeds (GEPA's metric calls can
    differ slightly between seeds).
    """
    rows = summary[summary["metric"] == metric]
    group = rows.groupby(list(keys))
    table = group.agg(
        rl_steps=("rl_steps", "mean"),
        policy_rollouts=("policy_rollouts", "mean"),
        mean=("value", "mean"),
        std=("value", "std"),
        seeds=("seed", "nunique"),
    ).reset_index()
    half = table["std"] / np.sqrt(table["seeds"]) * table["seeds"].map(_t_quantile)
    table["ci95_low"], table["ci95_high"] = table["mean"] - half, table["mean"] + half
    table.insert(len(keys), "metric", metric)
    return table


def curves_with_run_intervals(
    summary: pd.DataFrame, metric: str, keys: tuple[str, ...] = CURVE_KEYS
) -> pd.DataFrame:
    """curves(), where one seed leaves the t-interval undefined filled with that evaluation's own 95%
    bootstrap interval over problems (the summary row's ci95_low, ci95_high); `interval` says which."""
    table = curves(summary, metric, keys)
    single = (table["seeds"] == 1).to_numpy()
    table["interval"] = np.where(single, "bootstrap over problems", "t over seeds")
    if not {"ci95_low", "ci95_high"} <= set(summary.columns):
        return table
    rows = summary[summary["metric"] == metric]
    own = rows.groupby(list(keys))[["ci95_low", "ci95_high"]].mean().reset_index()
    own = table[list(keys)].merge(own, on=list(keys), how="left")
    for bound in ("ci95_low", "ci95_high"):
        table[bound] = np.where(single, own[bound].to_numpy(), table[bound].to_numpy())
    return table



def curve_point(row: pd.Series, name: str) -> dict:
    """One row of curves() as `name`, `name`_ci95_low, `name`_ci95_high and `name`_after_rounds."""
    return {
        name: row["mean"],
        f"{name}_ci95_low": row["ci95_low"],
        f"{name}_ci95_high": row["ci95_high"],
        f"{name}_after_rounds": int(row["after_rounds"]),
    }


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


def fit_ceiling(compute, reward, min_points: int = 5, rounds=None) -> dict:
    """Fit the sigmoid; A is the ceiling. Too few evaluation rounds give a warning, no number.

    The guard counts evaluation rounds (distinct `rounds`, i.e. after_rounds): compute values pooled
    over seeds differ from seed to seed for arms that run GEPA, and would pass it with fewer rounds
    than an arm whose seeds spend the same compute. Without `rounds`, distinct compute values count.
    """
    from scipy.optimize import curve_fit

    compute, reward = np.asarray(compute, dtype=float), np.asarray(reward, dtype=float)
    distinct = len(np.unique(compute if rounds is None else np.asarray(rounds)))
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
            "warning": f"{distinct} evaluation rounds; the 4-parameter fit needs at least "
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
    """The ceiling fit per (point, arm) on every seed's evaluation points, compute = policy rollouts;
    `points` is the number of evaluation rounds (what min_points is compared with)."""
    rows = summary[summary["metric"] == metric]
    records = [
        {"point": point, "arm": arm, "axis": "policy_rollouts"}
        | fit_ceiling(runs["policy_rollouts"], runs["value"], min_points, runs["after_rounds"])
        for (point, arm), runs in rows.groupby(["point", "arm"], sort=True)
    ]
    return pd.DataFrame(records)


KL_METRICS = ("kl_to_base", "kl_to_base_own_prompt")  # seed-prompt context (the definition), own prompt


def reward_and_kl(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (point, arm, after_rounds): mean over seeds of the validation reward and of KL to base,
    in the seed prompt's context (kl_to_base) and, where measured, the arm's own (kl_to_base_own_prompt)."""
    means = (
        summary[summary["metric"].isin([metric, *KL_METRICS])]
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
    kl_reduction_vs_rl = 1 − KL_arm / KL_rl (0.7 = 70% less drift), on kl_to_base (seed-prompt context,
    the one definition); kl_to_base_own_prompt is the same crossing in the arm's own prompt's context.
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
            record = {
                "point": point,
                "arm": arm,
                "matched_reward": level,
                "after_rounds": int(path["after_rounds"].iloc[reached]),
                "kl_to_base": kl,
                "final_kl_to_base": float(path["kl_to_base"].iloc[-1]),
            }
            if "kl_to_base_own_prompt" in path:
                own = path["kl_to_base_own_prompt"].to_numpy()
                record["kl_to_base_own_prompt"] = kl_at_reward(rewards, own, level)[1]
            point_records.append(record)
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


def problem_means(scores: pd.DataFrame, keys: list[str]) -> dict:
    """{key values: per-problem score averaged over seeds (a Series indexed by task, problem_id)}."""
    means = scores.groupby([*keys, "task", "problem_id"])["score"].mean()
    return {key: group.droplevel(list(range(len(keys)))) for key, group in means.groupby(level=keys)}


def problem_intervals(scores: pd.DataFrame, bootstrap: Bootstrap) -> pd.DataFrame:
    """Per (point, arm, after_rounds): the 95% bootstrap interval over problems of the validation mean
    (per-problem scores averaged over seeds first), the interval a single seed's curve has."""
    records = []
    for (point, arm, after), values in problem_means(scores, ["point", "arm", "after_rounds"]).items():
        low, high = bootstrap_interval(values.to_numpy(), bootstrap)
        records.append({"point": point, "arm": arm, "after_rounds": after,
                        "problems_ci95_low": low, "problems_ci95_high": high})
    columns = ["point", "arm", "after_rounds", "problems_ci95_low", "problems_ci95_high"]
    return pd.DataFrame(records, columns=columns)


def paired_difference(a: pd.Series, b: pd.Series, bootstrap: Bootstrap) -> dict:
    """mean(a) − mean(b) over the problems both have, with its paired 95% bootstrap interval (the
    problems are resampled together, so the interval is that of the per-problem differences' mean)."""
    a, b = a.align(b, join="inner")
    difference = (a - b).to_numpy()
    low, high = bootstrap_interval(difference, bootstrap)
    inside = bool(low <= 0 <= high) if not np.isnan(low) else True
    return {
        "a": float(a.mean()),
        "b": float(b.mean()),
        "difference": float(difference.mean()) if len(difference) else float("nan"),
        "ci95_low": low,
        "ci95_high": high,
        "problems": len(difference),
        "inside_noise": inside,
        "verdict": "inside the noise" if inside else "outside the noise",
    }


# The columns of a paired_scores result, in a table's order.
PAIRED_COLUMNS = ["difference", "difference_ci95_low", "difference_ci95_high", "problems", "inside_noise",
                  "verdict"]


def paired_scores(
    means: dict, a_key: tuple, b_key: tuple, bootstrap: Bootstrap, task: str | None = None
) -> dict:
    """paired_difference of two entries of problem_means (a − b), on one task's problems when `task`
    is given; its interval named difference_ci95_*. No verdict where either side has no scores: an
    empty pairing is not evidence of "inside the noise"."""
    a, b = means.get(a_key), means.get(b_key)
    if a is not None and b is not None and task is not None:
        a, b = (s[s.index.get_level_values("task") == task] for s in (a, b))
    if a is None or b is None or a.index.intersection(b.index).empty:
        return {
            "difference": float("nan"),
            "difference_ci95_low": float("nan"),
            "difference_ci95_high": float("nan"),
            "problems": 0,
            "inside_noise": pd.NA,
            "verdict": "no per-problem scores",
        }
    result = paired_difference(a, b, bootstrap)
    return {
        "difference": result["difference"],
        "difference_ci95_low": result["ci95_low"],
        "difference_ci95_high": result["ci95_high"],
        "problems": result["problems"],
        "inside_noise": result["inside_noise"],
        "verdict": result["verdict"],
    }


def differences_table(scores: pd.DataFrame, cell_scores: pd.DataFrame, bootstrap: Bootstrap) -> pd.DataFrame:
    """Which differences are inside the noise: paired bootstrap over the same validation problems.

    fst − rl and gepa − rl at every round, final − start per arm, and each decomposition cell −
    base weights + seed prompt. Per-problem scores are averaged over seeds first. `inside_noise` when
    the difference's 95% interval contains 0.
    """
    records = []
    by_round = problem_means(scores, ["point", "arm", "after_rounds"]) if not scores.empty else {}
    for point in sorted({key[0] for key in by_round}):
        rounds = sorted({key[2] for key in by_round if key[0] == point})
        arms = sorted({key[1] for key in by_round if key[0] == point})
        for arm in (a for a in ("fst", "gepa") if a in arms and REFERENCE_ARM in arms):
            for after in rounds:
                if (point, arm, after) in by_round and (point, REFERENCE_ARM, after) in by_round:
                    records.append({"point": point, "comparison": f"{arm} − {REFERENCE_ARM}",
                                    "after_rounds": after}
                                   | paired_difference(by_round[point, arm, after],
                                                       by_round[point, REFERENCE_ARM, after], bootstrap))
        for arm in arms:
            start, final = min(rounds), max(rounds)
            if final > start and (point, arm, final) in by_round and (point, arm, start) in by_round:
                records.append({"point": point, "comparison": f"{arm}: final − start", "after_rounds": final}
                               | paired_difference(by_round[point, arm, final], by_round[point, arm, start],
                                                   bootstrap))
    if not cell_scores.empty:
        cells = problem_means(cell_scores, ["point", "weights", "prompt"])
        for (point, weights, prompt), values in sorted(cells.items()):
            if (weights, prompt) == ("base", "seed") or (point, "base", "seed") not in cells:
                continue
            comparison = f"decomposition: {weights} weights + {prompt} prompt − base weights + seed prompt"
            records.append({"point": point, "comparison": comparison, "after_rounds": pd.NA}
                           | paired_difference(values, cells[point, "base", "seed"], bootstrap))
    columns = ["point", "comparison", "after_rounds", "a", "b", "difference", "ci95_low", "ci95_high",
               "problems", "inside_noise", "verdict"]
    return pd.DataFrame(records, columns=columns)
