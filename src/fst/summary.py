"""Experiment summary: every run's evaluation table in one Parquet file, and the reward curves."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pandas as pd

from fst.artifacts import read_json

_RUN_PARTS = ("point", "arm", "seed")


def _run(parts: tuple[str, str, str]) -> tuple[str, str, int]:
    point, arm, seed = parts
    return point, arm, int(seed.removeprefix("seed"))


def policy_rollouts_per_round(provenance_paths: list[Path]) -> dict[tuple, dict[int, int]]:
    """Policy rollouts generated in each round of each run: RL rollouts plus GEPA metric calls.

    Paths are <point>/<arm>/seed<k>/round<c>/provenance/<stage>.json of the fast and rollout stages.
    """
    totals: dict[tuple, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for path in map(Path, provenance_paths):
        counts = read_json(path)["counts"]
        round_index = int(path.parts[-3].removeprefix("round"))
        run = _run(path.parts[-6:-3])
        totals[run][round_index] += counts.get("rollouts", 0) + counts.get("metric_calls", 0)
    return totals


def policy_rollouts_before(per_round: dict[int, int], k: int) -> int:
    return sum(n for r, n in per_round.items() if r < k)


def collect(eval_paths: list[Path], provenance_paths: list[Path], steps_per_round: int) -> pd.DataFrame:
    """One row per (run, after_rounds, task, setting, metric), with the step axes of the report.

    rl_steps = optimiser steps taken (0 for arm gepa); policy_rollouts = every rollout the policy
    generated for training, RL rollouts and GEPA metric calls alike (evaluation not included).
    """
    rollouts = policy_rollouts_per_round(provenance_paths)
    frames = []
    for path in map(Path, eval_paths):
        frame = pd.read_parquet(path)
        point, arm, seed = run = _run(path.parts[-6:-3])  # <point>/<arm>/seed<k>/eval/after<n>/eval.parquet
        frame["point"], frame["arm"], frame["seed"] = point, arm, seed
        frame["rl_steps"] = frame["after_rounds"] * (0 if arm == "gepa" else steps_per_round)
        frame["policy_rollouts"] = [policy_rollouts_before(rollouts[run], k) for k in frame["after_rounds"]]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    first = [*_RUN_PARTS, "after_rounds", "rl_steps", "policy_rollouts"]
    return table[first + [c for c in table.columns if c not in first]]


def plot_reward_curves(summary: pd.DataFrame, out: Path) -> None:
    """Validation mean@k against RL steps and against all policy rollouts, per arm.

    Thin lines: single seeds; thick line: the mean over seeds. The right panel is the honest x-axis:
    GEPA's metric calls are policy rollouts too.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val = summary[summary["metric"].str.startswith("mean@")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=120, sharey=True)
    for ax, x, label in zip(
        axes, ("rl_steps", "policy_rollouts"), ("RL steps", "policy rollouts"), strict=True
    ):
        for (point, arm), runs in val.groupby(["point", "arm"]):
            name = arm if point == "default" else f"{arm} ({point})"
            mean = runs.groupby("after_rounds")[[x, "value"]].mean()
            (line,) = ax.plot(mean[x], mean["value"], marker="o", linewidth=2, label=name)
            for _, seed_run in runs.groupby("seed"):
                seed_run = seed_run.sort_values("after_rounds")
                ax.plot(seed_run[x], seed_run["value"], color=line.get_color(), alpha=0.3, linewidth=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation {val['metric'].iloc[0]} ({val['task'].iloc[0]})")
    axes[0].set_ylim(bottom=0)
    axes[0].legend(title="arm")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
