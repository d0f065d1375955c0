"""Continual learning: one uninterrupted run per arm over a schedule of tasks, switching every N rounds.

Round r (0-based) trains on schedule[r // N]; the evaluation after k rounds follows round k − 1, so it
belongs to stage (k − 1) // N (k = 0: before any training). Every evaluation point evaluates every
task of the schedule, so each task has a curve over the whole run: how far each arm gets on the
stage's task (normalised to the best arm's peak, the paper's per-stage figure) and what it keeps of
earlier tasks after the later ones (forgetting, paired over the same problems).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fst.evaluate import Bootstrap
from fst.report import analysis
from fst.report.figures import ARM_COLOURS, pyplot, save_figure
from fst.report.markdown import figure_link, markdown_table

FIGURES = {
    "continual_per_task_curves": "Continual learning: validation accuracy on every task of the schedule",
    "continual_normalised_stages": "Continual learning: each stage's peak accuracy over the best arm's peak",
}
_BOUNDS = ("", "_ci95_low", "_ci95_high")
NO_NORMALISER = "no arm rose above 0 on this stage's task: nothing to normalise by"


def stage_of(after_rounds, rounds_per_stage: int):
    """Stage of the evaluation after k rounds: (k − 1) // N, −1 before training (k = 0).

    After k rounds the last round run is k − 1, which trained on stage (k − 1) // N: the evaluation
    after N rounds ends stage 0, the one after N + 1 is the first of stage 1.
    """
    k = np.asarray(after_rounds)
    return np.where(k >= 1, (k - 1) // rounds_per_stage, -1)


def task_curves(summary: pd.DataFrame, rounds_per_stage: int) -> pd.DataFrame:
    """Per (point, task, arm, after_rounds): validation accuracy (mean over seeds, 95% interval over
    seeds, or over problems with one seed) and the stage the evaluation point belongs to."""
    summary, metric = analysis.with_validation_metric(summary)
    table = analysis.curves_with_run_intervals(summary, metric, ("point", "task", "arm", "after_rounds"))
    table["stage"] = stage_of(table["after_rounds"], rounds_per_stage)
    return table


def stage_table(summary: pd.DataFrame, schedule: list[str], rounds_per_stage: int) -> pd.DataFrame:
    """Per (point, stage, arm): peak accuracy on the stage's task within the stage and at its end,
    raw and normalised (normalise).

    Seeds are averaged first, then the maximum is taken over the stage's evaluation points (the
    earliest on ties): a maximum per seed would reward seed noise. The peak of noisy means is still
    an optimistic estimate; its interval is that of the evaluation point where it lies.
    """
    curves = task_curves(summary, rounds_per_stage)
    records = []
    for stage, task in enumerate(schedule):
        rows = curves[(curves["stage"] == stage) & (curves["task"] == task)]
        for (point, arm), path in rows.groupby(["point", "arm"], sort=True):
            path = path.sort_values("after_rounds")
            bounds = {
                "first_after_rounds": stage * rounds_per_stage + 1,
                "last_after_rounds": (stage + 1) * rounds_per_stage,
            }
            records.append(
                {"point": point, "stage": stage, "task": task, "arm": arm, **bounds}
                | analysis.curve_point(path.loc[path["mean"].idxmax()], "peak")
                | analysis.curve_point(path.iloc[-1], "end")
                | {"seeds": int(path["seeds"].max()), "interval": path["interval"].iloc[0]}
            )
    columns = ["point", "stage", "task", "arm", "first_after_rounds", "last_after_rounds"]
    columns += [f"{value}{bound}" for value in ("peak", "end") for bound in (*_BOUNDS, "_after_rounds")]
    return normalise(pd.DataFrame(records, columns=[*columns, "seeds", "interval"]))


def normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Peak and end-of-stage accuracy divided by the best peak any arm reached in the same stage and
    point (the best arm = 1.0), so stages of easy and hard tasks share one scale.

    The normalised interval is the raw interval divided by the same normaliser: it ignores the noise
    of the normaliser itself. A best peak not above 0 gives NaN, with a note.
    """
    table = table.copy()
    best = table.groupby(["point", "stage"])["peak"].transform("max")
    scale = best.where(best > 0)
    table["best_peak"] = best
    for value in ("peak", "end"):
        for bound in _BOUNDS:
            table[f"normalised_{value}{bound}"] = table[f"{value}{bound}"] / scale
    table["note"] = np.where(best > 0, "", NO_NORMALISER)
    return table


def forgetting_table(
    summary: pd.DataFrame,
    scores: pd.DataFrame,
    schedule: list[str],
    rounds_per_stage: int,
    bootstrap: Bootstrap,
) -> pd.DataFrame:
    """Per (point, arm, task of a stage finished before the run's last evaluation): accuracy at the end
    of its stage and at the end of the run, and final − end of stage paired over the task's problems
    (per-problem scores averaged over seeds; negative = forgotten), inside the noise when its 95%
    bootstrap interval contains 0."""
    curves = task_curves(summary, rounds_per_stage)
    means = analysis.problem_means(scores, list(analysis.CURVE_KEYS)) if not scores.empty else {}
    records = []
    for (point, arm), run in curves.groupby(["point", "arm"], sort=True):
        final_round = int(run["after_rounds"].max())
        for stage, task in enumerate(schedule[: max(int(stage_of(final_round, rounds_per_stage)), 0)]):
            path = run[run["task"] == task].sort_values("after_rounds")
            in_stage = path[path["stage"] == stage]
            if in_stage.empty:
                continue
            end, final = in_stage.iloc[-1], path.iloc[-1]
            keys = (point, arm, int(final["after_rounds"])), (point, arm, int(end["after_rounds"]))
            records.append(
                {"point": point, "arm": arm, "task": task, "stage": stage}
                | analysis.curve_point(end, "end")
                | analysis.curve_point(final, "final")
                | analysis.paired_scores(means, *keys, bootstrap, task=task)
            )
    columns = ["point", "arm", "task", "stage"]
    columns += [f"{value}{bound}" for value in ("end", "final") for bound in (*_BOUNDS, "_after_rounds")]
    return pd.DataFrame(records, columns=columns + analysis.PAIRED_COLUMNS)


def tables(
    summary: pd.DataFrame,
    scores: pd.DataFrame,
    schedule: list[str],
    rounds_per_stage: int,
    bootstrap: Bootstrap,
) -> dict[str, pd.DataFrame]:
    """The continual-learning tables: per-task curves, the per-stage table, forgetting."""
    return {
        "continual_curves": task_curves(summary, rounds_per_stage),
        "continual_stages": stage_table(summary, schedule, rounds_per_stage),
        "continual_forgetting": forgetting_table(summary, scores, schedule, rounds_per_stage, bootstrap),
    }


def per_task_curves(summary: pd.DataFrame, schedule: list[str], rounds_per_stage: int, out: Path):
    """Accuracy on each task of the schedule against rounds (one row of panels per sweep point),
    the task switches dashed and the stages that train on the panel's task shaded."""
    plt = pyplot()
    curves = task_curves(summary, rounds_per_stage)
    points, tasks = sorted(curves["point"].unique()), list(dict.fromkeys(schedule))
    fig, grid = plt.subplots(
        len(points),
        len(tasks),
        figsize=(4.2 * len(tasks), 3.4 * len(points)),
        dpi=110,
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for row, point in enumerate(points):
        for column, task in enumerate(tasks):
            ax = grid[row][column]
            for stage in (s for s, t in enumerate(schedule) if t == task):
                ax.axvspan(stage * rounds_per_stage, (stage + 1) * rounds_per_stage, color="grey", alpha=0.12)
            for switch in range(1, len(schedule)):
                ax.axvline(switch * rounds_per_stage, color="grey", linestyle="--", linewidth=1)
            rows = curves[(curves["point"] == point) & (curves["task"] == task)]
            for arm, curve in rows.groupby("arm", sort=True):
                curve = curve.sort_values("after_rounds")
                colour = ARM_COLOURS.get(arm)
                ax.plot(curve["after_rounds"], curve["mean"], marker="o", color=colour, label=arm)
                ax.fill_between(
                    curve["after_rounds"], curve["ci95_low"], curve["ci95_high"], color=colour, alpha=0.15
                )
            title = f"{task} (shaded: trained on it)"
            ax.set_title(title if len(points) == 1 else f"{point}\n{title}", fontsize=8)
            ax.set_xlabel("rounds")
            ax.grid(alpha=0.3)
        grid[row][0].set_ylabel("validation accuracy")
    grid[0][0].set_ylim(-0.02, 1.02)
    grid[0][0].legend(fontsize=8)
    return save_figure(fig, out)


def normalised_stages(stage_table: pd.DataFrame, out: Path):
    """Each stage's peak accuracy normalised to the best arm's (1.0, dotted), per arm, with the
    normalised interval as error bars (one panel per sweep point)."""
    plt = pyplot()
    points = sorted(stage_table["point"].unique()) or ["none"]
    fig, axes = plt.subplots(
        1, len(points), figsize=(5.6 * len(points), 3.8), dpi=110, sharey=True, squeeze=False
    )
    for ax, point in zip(axes[0], points, strict=True):
        rows = stage_table[stage_table["point"] == point]
        stages = rows[["stage", "task"]].drop_duplicates().sort_values("stage")
        arms = sorted(rows["arm"].unique())
        width = 0.8 / max(len(arms), 1)
        for i, arm in enumerate(arms):
            bars = rows[rows["arm"] == arm].set_index("stage").reindex(stages["stage"])
            value = bars["normalised_peak"]
            error = [
                (value - bars["normalised_peak_ci95_low"]).fillna(0),
                (bars["normalised_peak_ci95_high"] - value).fillna(0),
            ]
            ax.bar(
                np.arange(len(stages)) + i * width,
                value,
                width,
                yerr=error,
                capsize=3,
                color=ARM_COLOURS.get(arm),
                label=arm,
            )
        for x, stage in enumerate(stages["stage"]):
            if rows.loc[rows["stage"] == stage, "normalised_peak"].isna().all():
                ax.text(x + 0.4 - width / 2, 0.05, "no peak\nabove 0", ha="center", fontsize=7)
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_xticks(
            np.arange(len(stages)) + 0.4 - width / 2,
            [f"stage {s}\n{t}" for s, t in stages.itertuples(index=False)],
            fontsize=7,
        )
        ax.grid(alpha=0.3, axis="y")
        if len(points) > 1:
            ax.set_title(point, fontsize=8)
    axes[0][0].set_ylabel("peak accuracy / best arm's peak")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, out)


def draw(
    summary: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    schedule: list[str],
    rounds_per_stage: int,
    out: dict[str, Path],
):
    per_task_curves(summary, schedule, rounds_per_stage, out["continual_per_task_curves"])
    normalised_stages(tables["continual_stages"], out["continual_normalised_stages"])


def _schedule_text(stages: pd.DataFrame) -> str:
    columns = ["stage", "task", "first_after_rounds", "last_after_rounds"]
    order = stages[columns].drop_duplicates().sort_values("stage")
    parts = [
        f"stage {s}: {t} (evaluations after rounds {a}–{b})" for s, t, a, b in order.itertuples(index=False)
    ]
    switches = ", ".join(str(b) for b in order["last_after_rounds"].iloc[:-1])
    return f"Schedule: {'; '.join(parts)}. The training task switches after rounds {switches or '(none)'}."


def section(tables: dict[str, pd.DataFrame], figure_files: dict[str, Path], out: Path) -> list[str]:
    """The continual-learning section of the report: how to read it, its tables and figures."""
    stages, forgetting = tables["continual_stages"], tables["continual_forgetting"]
    shown = [
        "point",
        "stage",
        "task",
        "arm",
        "peak",
        "peak_ci95_low",
        "peak_ci95_high",
        "peak_after_rounds",
        "end",
        "normalised_peak",
        "normalised_peak_ci95_low",
        "normalised_peak_ci95_high",
        "normalised_end",
        "seeds",
        "note",
    ]
    lost = [
        "point",
        "arm",
        "task",
        "end",
        "end_after_rounds",
        "final",
        "final_after_rounds",
        "difference",
        "difference_ci95_low",
        "difference_ci95_high",
        "verdict",
    ]
    return [
        "## Continual learning",
        "One uninterrupted run per arm over a schedule of tasks; every evaluation point evaluates every "
        "task of the schedule. Stage s trains on its task for rounds sN … (s+1)N − 1 (0-based), so the "
        "evaluation after k rounds belongs to stage (k − 1) // N (after N rounds: the end of stage 0). "
        + (_schedule_text(stages) if not stages.empty else ""),
        "Per stage: `peak` = the highest validation accuracy on the stage's task among the stage's "
        "evaluation points (seeds averaged first), `end` = at the stage's last evaluation point. "
        "`normalised_*` divide by the best peak any arm reached in that stage (best arm = 1.0); their "
        "interval is the raw interval divided by the same normaliser. Intervals: t over seeds, or with "
        "one seed the evaluation's bootstrap over problems.",
        markdown_table(stages[shown] if not stages.empty else stages),
        "Forgetting: accuracy on each finished stage's task at the end of its stage and at the end of the "
        "run; `difference` = final − end of stage (negative: forgotten), paired bootstrap over the same "
        "problems, *inside the noise* when its interval contains 0. A task that comes back later in the "
        "schedule is trained on again before the end, so its forgetting row measures retraining too.",
        markdown_table(forgetting[lost] if not forgetting.empty else forgetting),
        *[figure_link(FIGURES[name], path, out) for name, path in figure_files.items()],
    ]
