"""Experiment summary: every run's evaluation table in one Parquet file, and the reward curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst.artifacts import read_json

# results/<experiment>/<point>/<arm>/seed<k>/eval/after<n>/eval.parquet
_RUN_PARTS = ("point", "arm", "seed")


def run_key(eval_path: Path) -> dict:
    point, arm, seed = Path(eval_path).parts[-6:-3]
    return {"point": point, "arm": arm, "seed": int(seed.removeprefix("seed"))}


def collect(eval_paths: list[Path], steps_per_round: int, rollouts_per_round: int) -> pd.DataFrame:
    """One row per (run, after_rounds, task, setting, metric), with the step axes of the report.

    rl_steps = rounds × T; policy_rollouts = every rollout the policy generated for training
    (RL rollouts; GEPA metric calls join this count when the fast channel runs).
    """
    frames = []
    for path in eval_paths:
        frame = pd.read_parquet(path)
        for key, value in run_key(path).items():
            frame[key] = value
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    table["rl_steps"] = table["after_rounds"] * steps_per_round
    table["policy_rollouts"] = table["after_rounds"] * rollouts_per_round
    first = [*_RUN_PARTS, "after_rounds", "rl_steps", "policy_rollouts"]
    return table[first + [c for c in table.columns if c not in first]]


def rollouts_per_round(provenance_paths: list[Path]) -> int:
    counts = {read_json(p)["counts"]["rollouts"] for p in provenance_paths}
    if len(counts) != 1:
        raise ValueError(f"rounds generated different numbers of rollouts: {sorted(counts)}")
    return counts.pop()


def plot_reward_curve(summary: pd.DataFrame, out: Path, x: str = "rl_steps") -> None:
    """Validation mean@k against `x`: one thin line per seed, the seed mean thick, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = summary[summary["metric"].str.startswith("mean@")]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for (point, arm), runs in val.groupby(["point", "arm"]):
        label = arm if point == "default" else f"{arm} ({point})"
        mean = runs.groupby(x)["value"].mean()
        (line,) = ax.plot(mean.index, mean.values, marker="o", linewidth=2, label=label)
        for _, seed_run in runs.groupby("seed"):
            seed_run = seed_run.sort_values(x)
            ax.plot(seed_run[x], seed_run["value"], color=line.get_color(), alpha=0.3, linewidth=1)
    metric = val["metric"].iloc[0]
    ax.set_xlabel("RL steps" if x == "rl_steps" else x.replace("_", " "))
    ax.set_ylabel(f"validation {metric} ({val['task'].iloc[0]})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(title="arm")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
