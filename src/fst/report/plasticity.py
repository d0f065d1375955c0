"""Plasticity probe: can the weights a phase-A arm ends with still learn something new?

Phase B runs the same plain RL on a new task from each phase-A initialisation; in its summary the
`arm` column holds the initialisation: "base" (the control, the base model), "fst" and "rl" (those
arms' final weights). Lower phase-B accuracy than from base means training cost plasticity.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst.evaluate import Bootstrap
from fst.report import analysis
from fst.report.figures import pyplot, save_figure
from fst.report.markdown import figure_link, markdown_table

CONTROL = "base"
INIT_COLOURS = {"base": "black", "fst": "tab:blue", "rl": "tab:orange"}
FIGURES = {"plasticity_phase_b_curves": "Plasticity: phase-B validation accuracy from each initialisation"}


def init_curves(summary: pd.DataFrame) -> pd.DataFrame:
    """Per (point, init, after_rounds): phase-B validation accuracy (mean over seeds, 95% interval
    over seeds, or over problems with one seed)."""
    summary, metric = analysis.with_validation_metric(summary)
    return analysis.curves_with_run_intervals(summary, metric).rename(columns={"arm": "init"})


def plasticity_table(summary: pd.DataFrame, scores: pd.DataFrame, bootstrap: Bootstrap) -> pd.DataFrame:
    """Per (point, init): phase-B accuracy at the start, at its peak (seeds averaged first, earliest
    on ties) and at the final round, and final − the base init's final, paired over the same problems
    (per-problem scores averaged over seeds), inside the noise when its 95% interval contains 0."""
    curves = init_curves(summary)
    means = analysis.problem_means(scores, list(analysis.CURVE_KEYS)) if not scores.empty else {}
    records = []
    for point, rows in curves.groupby("point", sort=True):
        finals = rows.sort_values("after_rounds").groupby("init")["after_rounds"].last()
        for init, path in rows.groupby("init", sort=True):
            path = path.sort_values("after_rounds")
            record = {"point": point, "init": init, "seeds": int(path["seeds"].max())}
            record |= analysis.curve_point(path.iloc[0], "start")
            record |= analysis.curve_point(path.loc[path["mean"].idxmax()], "peak")
            record |= analysis.curve_point(path.iloc[-1], "final")
            if init == CONTROL:
                record["verdict"] = "control"
            elif CONTROL not in finals:
                record["verdict"] = f"no {CONTROL} init to compare with"
            else:
                keys = (point, init, int(finals[init])), (point, CONTROL, int(finals[CONTROL]))
                record |= analysis.paired_scores(means, *keys, bootstrap)
            records.append(record)
    columns = ["point", "init"]
    columns += [
        f"{v}{b}"
        for v in ("start", "peak", "final")
        for b in ("", "_ci95_low", "_ci95_high", "_after_rounds")
    ]
    return pd.DataFrame(records, columns=[*columns, "seeds", *analysis.PAIRED_COLUMNS])


def tables(summary: pd.DataFrame, scores: pd.DataFrame, bootstrap: Bootstrap) -> dict[str, pd.DataFrame]:
    """The plasticity tables: phase-B curves per initialisation and the comparison with base."""
    return {
        "plasticity_curves": init_curves(summary),
        "plasticity": plasticity_table(summary, scores, bootstrap),
    }


def phase_b_curves(summary: pd.DataFrame, out: Path):
    """Phase-B validation accuracy against rounds, one line per initialisation with its 95% band
    (one panel per sweep point)."""
    plt = pyplot()
    curves = init_curves(summary)
    points = sorted(curves["point"].unique())
    fig, axes = plt.subplots(
        1, len(points), figsize=(4.2 * len(points), 3.4), dpi=110, sharey=True, squeeze=False
    )
    for ax, point in zip(axes[0], points, strict=True):
        for init, curve in curves[curves["point"] == point].groupby("init", sort=True):
            curve = curve.sort_values("after_rounds")
            colour = INIT_COLOURS.get(init)
            ax.plot(curve["after_rounds"], curve["mean"], marker="o", color=colour, label=f"from {init}")
            ax.fill_between(
                curve["after_rounds"], curve["ci95_low"], curve["ci95_high"], color=colour, alpha=0.15
            )
        ax.set_xlabel("phase-B rounds")
        ax.grid(alpha=0.3)
        if len(points) > 1:
            ax.set_title(point.replace("/", "\n"), fontsize=8)
    axes[0][0].set_ylabel("phase-B validation accuracy")
    axes[0][0].set_ylim(-0.02, 1.02)
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, out)


def draw(summary: pd.DataFrame, tables: dict[str, pd.DataFrame], out: dict[str, Path]):
    phase_b_curves(summary, out["plasticity_phase_b_curves"])


def section(
    tables: dict[str, pd.DataFrame], figure_files: dict[str, Path], out: Path, task: str
) -> list[str]:
    """The plasticity section of the report: how to read it, its table and figure."""
    table = tables["plasticity"]
    shown = [
        "point",
        "init",
        "start",
        "peak",
        "peak_ci95_low",
        "peak_ci95_high",
        "peak_after_rounds",
        "final",
        "final_ci95_low",
        "final_ci95_high",
        "difference",
        "difference_ci95_low",
        "difference_ci95_high",
        "verdict",
    ]
    return [
        f"## Plasticity (phase B: plain RL on {task} from each phase-A checkpoint)",
        f"Each phase-A arm's final weights (`init` fst, rl) and the base model (`init` {CONTROL}, the "
        f"control) are trained again with the same plain RL on {task}. `start`, `peak` (the highest "
        "seed-mean over rounds) and `final` are phase-B validation accuracy; intervals: t over seeds, or "
        f"with one seed the evaluation's bootstrap over problems. `difference` = final − {CONTROL}'s final, "
        "paired bootstrap over the same problems: below 0 and outside the noise, the phase-A training "
        "left weights that learn the new task less well than the base model. The peak is the best of "
        "several noisy points (it may be the start), so it leans high; `final` is the fairer comparison. "
        "Each run's KL reference is its own starting weights, as in a fresh RL run.",
        markdown_table(table[shown] if not table.empty else table),
        *[figure_link(FIGURES[name], path, out) for name, path in figure_files.items()],
    ]
