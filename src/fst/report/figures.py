"""The report's figures, drawn from the summary and analysis tables (matplotlib, Agg backend).

One subplot per sweep point (small multiples share their axes, so points compare at a glance);
one colour per arm in every figure; thin lines are single seeds, thick lines the mean over seeds,
bands the 95% interval over seeds where there are several.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fst.artifacts import atomic_path
from fst.report.analysis import reward_and_kl

ARM_COLOURS = {"fst": "tab:blue", "rl": "tab:orange", "gepa": "tab:green", "rl→gepa": "tab:red"}
AXIS_LABELS = {
    "rl_steps": "RL steps",
    "policy_rollouts": "policy rollouts (RL + GEPA metric calls)",
}


# The report's figures: file name (figures/<name>.png) -> title.
TITLES = {
    "reward_vs_rl_steps": "Validation reward against RL steps",
    "reward_vs_policy_rollouts": "Validation reward against all policy rollouts",
    "kl_vs_reward": "Drift: KL to the base model (seed prompt's context; own prompt's) against reward",
    "ood_accuracy": "Out-of-domain accuracy without the evolved prompt",
    "decomposition": "Channel decomposition of arm fst's final round",
    "points": "Final validation reward per sweep point",
}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_grid(
    points: list[str], width: float = 4.2, height: float = 3.4, sharey: bool = True, columns: int = 3
):
    plt = pyplot()
    columns = min(len(points), columns)
    rows = -(-len(points) // columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(width * columns, height * rows),
        dpi=110,
        sharex=True,
        sharey=sharey,
        squeeze=False,
    )
    for ax in axes.flat[len(points) :]:
        ax.set_visible(False)
    return fig, dict(zip(points, axes.flat, strict=False))


def _title(ax, point: str, several: bool):
    if several:
        ax.set_title(point.replace("/", "\n"), fontsize=8)


def save_figure(fig, out: Path):
    """Write the figure and return it (closed, but its artists keep the plotted data for checks)."""
    fig.tight_layout()
    with atomic_path(Path(out)) as tmp:
        fig.savefig(tmp, format=Path(out).suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return fig


def band(curve: pd.DataFrame):
    """The 95% band of a curve: over seeds where there are several, else over problems (bootstrap)."""
    low, high = curve["ci95_low"], curve["ci95_high"]
    if "problems_ci95_low" in curve:
        low, high = low.fillna(curve["problems_ci95_low"]), high.fillna(curve["problems_ci95_high"])
    return low, high


def reward_curves(
    summary: pd.DataFrame, curves: pd.DataFrame, efficiency: pd.DataFrame, axis: str, out: Path
):
    """Validation reward against `axis`, with RL's peak (the sample-efficiency target) dashed and
    each arm's first evaluation point at or above that target ringed."""
    metric = curves["metric"].iloc[0]
    points = sorted(curves["point"].unique())
    fig, panels = panel_grid(points)
    seeds = summary[summary["metric"] == metric]
    for point, ax in panels.items():
        for arm, curve in curves[curves["point"] == point].groupby("arm", sort=True):
            colour = ARM_COLOURS.get(arm)
            curve = curve.sort_values("after_rounds")
            ax.plot(curve[axis], curve["mean"], marker="o", linewidth=2, color=colour, label=arm)
            low, high = band(curve)
            ax.fill_between(curve[axis], low, high, color=colour, alpha=0.15)
            runs = seeds[(seeds["point"] == point) & (seeds["arm"] == arm)]
            if runs["seed"].nunique() > 1:
                for _, run in runs.groupby("seed"):
                    run = run.sort_values("after_rounds")
                    ax.plot(run[axis], run["value"], color=colour, alpha=0.35, linewidth=0.8)
        mean_rows = efficiency[(efficiency["point"] == point) & (efficiency["seed"] == "mean")]
        if not mean_rows.empty:
            ax.axhline(
                mean_rows["target"].iloc[0], color="grey", linestyle="--", linewidth=1, label="rl peak"
            )
            arm_curves = curves[curves["point"] == point].set_index(["arm", "after_rounds"])["mean"]
            for row in mean_rows[mean_rows["reached"]].itertuples():
                ax.plot(
                    getattr(row, axis),
                    arm_curves[(row.arm, row.after_rounds)],
                    marker="o",
                    markersize=11,
                    fillstyle="none",
                    color=ARM_COLOURS.get(row.arm),
                    linewidth=0,
                )
        ax.set_xlabel(AXIS_LABELS[axis])
        ax.grid(alpha=0.3)
        _title(ax, point, len(points) > 1)
    first = next(iter(panels.values()))
    first.set_ylabel(f"validation {metric}")
    first.set_ylim(bottom=0)
    first.legend(fontsize=8)
    return save_figure(fig, out)


KL_CONTEXTS = {
    "kl_to_base": "seed prompt's context (the definition)",
    "kl_to_base_own_prompt": "arm's own prompt's context",
}


def kl_vs_reward(summary: pd.DataFrame, metric: str, drift: pd.DataFrame, out: Path):
    """KL to the base model against validation reward, one line per arm in round order (numbered).

    One row per sweep point, two columns: KL in the seed prompt's context (the one definition every
    arm is measured under) and in the arm's own prompt's context.
    """
    plt = pyplot()
    means = reward_and_kl(summary, metric)
    points = sorted(means["point"].unique())
    contexts = [c for c in KL_CONTEXTS if c in means.columns]
    fig, grid = plt.subplots(
        len(points), len(contexts), figsize=(4.2 * len(contexts), 3.4 * len(points)), dpi=110,
        sharex=True, sharey=True, squeeze=False,
    )
    for row_index, point in enumerate(points):
        for column, context in enumerate(contexts):
            ax = grid[row_index][column]
            for arm, rows in means[means["point"] == point].groupby("arm", sort=True):
                rows = rows.sort_values("after_rounds")
                ax.plot(rows["reward"], rows[context], marker="o", color=ARM_COLOURS.get(arm), label=arm)
                for row in rows.itertuples():
                    ax.annotate(
                        str(row.after_rounds),
                        (row.reward, getattr(row, context)),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
            matched = drift[drift["point"] == point] if not drift.empty else drift
            if not matched.empty:
                ax.axvline(
                    matched["matched_reward"].iloc[0],
                    color="grey",
                    linestyle="--",
                    linewidth=1,
                    label="matched reward",
                )
            ax.set_xlabel(f"validation {metric}")
            ax.grid(alpha=0.3)
            title = KL_CONTEXTS[context] if len(points) == 1 else f"{point}\n{KL_CONTEXTS[context]}"
            ax.set_title(title, fontsize=8)
        grid[row_index][0].set_ylabel("KL(π_θ ‖ π_base) at τ, per token")
    grid[0][0].legend(fontsize=8)
    return save_figure(fig, out)


def ood_accuracy(summary: pd.DataFrame, out: Path):
    """Out-of-domain greedy accuracy (no system prompt) against rounds: one panel per task and point."""
    rows = summary[summary["metric"] == "greedy_accuracy"]
    means = rows.groupby(["point", "task", "arm", "after_rounds"])["value"].mean().reset_index()
    panels_keys = [
        f"{task}|{point}"
        for point in sorted(means["point"].unique())
        for task in sorted(means["task"].unique())
    ]
    several = means["point"].nunique() > 1
    fig, panels = panel_grid(panels_keys or ["none"])
    for key, ax in panels.items():
        task, _, point = key.partition("|")
        for arm, curve in means[(means["task"] == task) & (means["point"] == point)].groupby(
            "arm", sort=True
        ):
            curve = curve.sort_values("after_rounds")
            ax.plot(curve["after_rounds"], curve["value"], marker="o", color=ARM_COLOURS.get(arm), label=arm)
        ax.set_title(f"{task}\n{point}" if several else task, fontsize=8)
        ax.set_xlabel("rounds")
        ax.grid(alpha=0.3)
    first = next(iter(panels.values()))
    first.set_ylabel("greedy accuracy, no system prompt")
    first.set_ylim(-0.02, 1.02)
    first.legend(fontsize=8)
    return save_figure(fig, out)


def decomposition_bars(cells: pd.DataFrame, table: pd.DataFrame, out: Path):
    """Validation reward of {base, trained} weights x {seed, evolved} prompt (arm fst, final round)."""
    if table.empty:
        fig, panels = panel_grid(["none"])
        panels["none"].text(
            0.5, 0.5, "no fst run to decompose", ha="center", transform=panels["none"].transAxes
        )
        return save_figure(fig, out)
    points = sorted(table["point"].unique())
    fig, panels = panel_grid(points, width=5.6, sharey=True)
    order = [("base", "seed"), ("base", "evolved"), ("trained", "seed"), ("trained", "evolved")]
    colours = ["lightgrey", "tab:green", "tab:orange", "tab:blue"]
    for point, ax in panels.items():
        rows = table[table["point"] == point].set_index(["weights", "prompt"])
        ax.bar(range(4), [rows["mean"].get(cell, np.nan) for cell in order], color=colours)
        seed_cells = cells[cells["point"] == point].set_index(["weights", "prompt"])["value"]
        for x, cell in enumerate(order):
            values = seed_cells[[cell]] if cell in seed_cells.index else []
            ax.plot([x] * len(values), values, "k.", markersize=5)
        ax.set_xticks(range(4), [f"{w} weights\n{p} prompt" for w, p in order], fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        _title(ax, point, len(points) > 1)
    next(iter(panels.values())).set_ylabel(f"validation {cells['metric'].iloc[0]}")
    return save_figure(fig, out)


def point_comparison(curves: pd.DataFrame, out: Path):
    """Final validation reward of every arm at every sweep point (mean over seeds, 95% interval)."""
    plt = pyplot()
    final = curves.sort_values("after_rounds").groupby(["point", "arm"]).tail(1)
    points, arms = sorted(final["point"].unique()), sorted(final["arm"].unique())
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(points) * len(arms) / 2), 3.8), dpi=110)
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        rows = final[final["arm"] == arm].set_index("point").reindex(points)
        error = (rows["ci95_high"] - rows["mean"]).fillna(0)
        ax.bar(
            np.arange(len(points)) + i * width,
            rows["mean"],
            width,
            yerr=error,
            capsize=3,
            color=ARM_COLOURS.get(arm),
            label=arm,
        )
    ax.set_xticks(
        np.arange(len(points)) + 0.4 - width / 2, [p.replace("/", "\n") for p in points], fontsize=7
    )
    ax.set_ylabel(f"final validation {final['metric'].iloc[0]}")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_figure(fig, out)
