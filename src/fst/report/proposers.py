"""Does the feedback matter? Each arm with a fast channel against its feedback-blind twin.

A sweep over `fast.proposer: [reflective, blind]` runs every arm twice, once with GEPA's reflective
proposals (the reflection LM reads the parent's rollouts and their feedback) and once with the blind
control (the same loop, budget and accounting, but the proposal is written from the current prompt and
the task's description only). Two sweep points are twins when their names differ only in the
`fast.proposer~...` segment; they share problems and evaluation seeds, so a twin pair's difference is
paired over problems. Pure pandas on the summary and per-problem score tables, like fst.report.analysis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fst.evaluate import Bootstrap
from fst.report import analysis
from fst.report.figures import ARM_COLOURS, band, panel_grid, save_figure
from fst.report.markdown import markdown_table

PROPOSER_KEY = "fast.proposer"
REFLECTIVE, BLIND = "reflective", "blind"
FAST_ARMS = ("fst", "gepa")  # the arms that run GEPA rounds; arm rl's twins are the same run twice
NO_OTHER_VALUES = "(no other swept key)"
LINE_STYLES = {REFLECTIVE: "-", BLIND: "--"}

FIGURES = {
    "reflective_vs_blind": "Reflective GEPA against its feedback-blind twin: validation reward by round",
}
COLUMNS = [
    "label",
    "arm",
    "after_rounds",
    "reflective",
    "blind",
    "difference",
    "ci95_low",
    "ci95_high",
    "problems",
    "seeds",
    "inside_noise",
    "verdict",
    "reflective_policy_rollouts",
    "blind_policy_rollouts",
    "reflective_point",
    "blind_point",
]
CURVE_COLUMNS = [
    "label",
    "proposer",
    "point",
    "arm",
    "after_rounds",
    "metric",
    "rl_steps",
    "policy_rollouts",
    "mean",
    "std",
    "seeds",
    "ci95_low",
    "ci95_high",
    "problems_ci95_low",
    "problems_ci95_high",
]
HOW_TO_GET_A_TWIN = (
    "No arm with a fast channel has a feedback-blind twin in this experiment: add `sweep: {fast.proposer: "
    "[reflective, blind]}` to the config, with arm fst or gepa among the arms, to run each beside its "
    "blind twin."
)
HOW_TO_READ = (
    "Each arm with a fast channel (fst, gepa) is compared with its feedback-blind twin: the same sweep "
    "point except `fast.proposer`, so the same problems, seeds, GEPA budget and evaluation seeds. The "
    "blind proposer writes each new prompt from the current prompt and the task's description only, never "
    "the rollouts or their feedback; the difference measures what reading the rollouts adds. `reflective` "
    "and `blind` are the validation means over seeds; `difference` = reflective − blind with its paired "
    "95% bootstrap interval over problems (per-problem scores averaged over seeds first); the verdict names "
    "the side that wins only when the interval excludes 0. `reflective_policy_rollouts` and "
    "`blind_policy_rollouts` are the policy rollouts each side had spent (RL plus GEPA's metric calls, "
    "mean over seeds): both proposers get the same budget, so they should be close. After 0 rounds the "
    "twins are the same base model and seed prompt: the difference is 0. `label` names the other swept "
    "values the twins share (shown when other keys are swept too)."
)


def point_values(point: str) -> dict[str, str]:
    """{key: folder value} of a sweep point's name (`key~value` segments joined by "/"; {} for the
    default point). Values that are not path-safe appear as `v<index>` (fst.sweep.point_name), which
    still tells two points' values apart."""
    values = {}
    for segment in point.split("/"):
        key, sep, value = segment.partition("~")
        if sep:
            values[key] = value
    return values


def twin_points(points: list[str]) -> list[tuple[str, str, str]]:
    """(reflective point, blind point, label of the other swept values) for every pair of points whose
    names differ only in the `fast.proposer~...` segment, sorted by label. A point without its twin
    (e.g. only one proposer ran) is left out."""
    reflective, blind = {}, {}
    for point in set(points):
        values = point_values(point)
        proposer = values.pop(PROPOSER_KEY, None)
        others = tuple(sorted(values.items()))
        if proposer == REFLECTIVE:
            reflective[others] = point
        elif proposer == BLIND:
            blind[others] = point
    pairs = [
        (reflective[others], blind[others], "/".join(f"{k}~{v}" for k, v in others) or NO_OTHER_VALUES)
        for others in reflective
        if others in blind
    ]
    return sorted(pairs, key=lambda pair: pair[2])


def _empty() -> dict[str, pd.DataFrame]:
    return {
        "proposers": pd.DataFrame(columns=COLUMNS),
        "proposer_curves": pd.DataFrame(columns=CURVE_COLUMNS),
    }


def tables(summary: pd.DataFrame, scores: pd.DataFrame, bootstrap: Bootstrap) -> dict[str, pd.DataFrame]:
    """The twin comparison ("proposers": one row per twin pair, arm fst/gepa and round) and the curves
    it is drawn from ("proposer_curves": analysis.curves of the twin points with their problem
    intervals and a `proposer` column). Both empty when no point has a twin."""
    pairs = twin_points(sorted(summary["point"].unique())) if not summary.empty else []
    if not pairs:
        return _empty()
    summary, metric = analysis.with_validation_metric(summary)
    proposer_of = {p: side for r, b, _ in pairs for p, side in ((r, REFLECTIVE), (b, BLIND))}
    label_of = {p: label for r, b, label in pairs for p in (r, b)}
    twins = summary[summary["point"].isin(proposer_of) & summary["arm"].isin(FAST_ARMS)]
    curves = analysis.curves(twins, metric)
    twin_scores = (
        scores[scores["point"].isin(proposer_of) & scores["arm"].isin(FAST_ARMS)] if len(scores) else scores
    )
    if not twin_scores.empty:
        intervals = analysis.problem_intervals(twin_scores, bootstrap)
        curves = curves.merge(intervals, on=["point", "arm", "after_rounds"], how="left")
    curves = curves.assign(label=curves["point"].map(label_of), proposer=curves["point"].map(proposer_of))
    curves = curves.reindex(columns=CURVE_COLUMNS)
    problems = (
        analysis.problem_means(twin_scores, ["point", "arm", "after_rounds"]) if len(twin_scores) else {}
    )
    records = []
    for reflective, blind, label in pairs:
        for arm in FAST_ARMS:
            sides = [
                curves[(curves["point"] == p) & (curves["arm"] == arm)].set_index("after_rounds")
                for p in (reflective, blind)
            ]
            for after in sorted(set(sides[0].index) & set(sides[1].index)):
                r, b = sides[0].loc[after], sides[1].loc[after]
                record = {
                    "label": label,
                    "arm": arm,
                    "after_rounds": after,
                    "reflective": r["mean"],
                    "blind": b["mean"],
                    "seeds": int(min(r["seeds"], b["seeds"])),
                    "reflective_policy_rollouts": r["policy_rollouts"],
                    "blind_policy_rollouts": b["policy_rollouts"],
                    "reflective_point": reflective,
                    "blind_point": blind,
                }
                keys = (reflective, arm, after), (blind, arm, after)
                records.append(record | _paired(problems, keys, r["mean"] - b["mean"], bootstrap))
    return {"proposers": pd.DataFrame(records, columns=COLUMNS), "proposer_curves": curves}


def _paired(problems: dict, keys: tuple, seed_difference: float, bootstrap: Bootstrap) -> dict:
    """The paired difference over problems of two curve points, or the difference of their seed means
    without an interval when a side has no per-problem scores."""
    if not all(key in problems for key in keys):
        return {
            "difference": seed_difference,
            "ci95_low": np.nan,
            "ci95_high": np.nan,
            "problems": 0,
            "inside_noise": pd.NA,
            "verdict": "no per-problem scores",
        }
    paired = analysis.paired_difference(problems[keys[0]], problems[keys[1]], bootstrap)
    return {
        key: paired[key] for key in ("difference", "ci95_low", "ci95_high", "problems", "inside_noise")
    } | {"verdict": _verdict(paired["difference"], paired["inside_noise"])}


def _verdict(difference: float, inside_noise: bool) -> str:
    if inside_noise:
        return "inside the noise"
    return f"{REFLECTIVE} better" if difference > 0 else f"{BLIND} better"


def draw(summary: pd.DataFrame, tables: dict[str, pd.DataFrame], out: dict[str, Path]):
    """Validation reward against rounds, one panel per arm with a fast channel (and per twin pair when
    other keys are swept too): solid = reflective, dashed = blind, thick = mean over seeds, thin = single
    seeds, bands = 95% interval over seeds, or over problems with one seed (as figures.reward_curves)."""
    curves = tables["proposer_curves"]
    if curves.empty:
        fig, panels = panel_grid(["none"])
        panels["none"].text(
            0.5, 0.5, "no reflective/blind twin pair", ha="center", transform=panels["none"].transAxes
        )
        return save_figure(fig, out["reflective_vs_blind"])
    summary, metric = analysis.with_validation_metric(summary)
    seeds = summary[summary["metric"] == metric]
    labels = sorted(curves["label"].unique())
    keys = [
        (label, arm)
        for label in labels
        for arm in FAST_ARMS
        if ((curves["label"] == label) & (curves["arm"] == arm)).any()
    ]
    arms = sorted({arm for _, arm in keys})  # one column per arm, one row per twin pair
    fig, panels = panel_grid([f"{arm}|{label}" for label, arm in keys], columns=len(arms))
    for (label, arm), ax in zip(keys, panels.values(), strict=True):
        colour = ARM_COLOURS.get(arm)
        for proposer in (REFLECTIVE, BLIND):
            curve = curves[
                (curves["label"] == label) & (curves["arm"] == arm) & (curves["proposer"] == proposer)
            ]
            curve = curve.sort_values("after_rounds")
            style = LINE_STYLES[proposer]
            ax.plot(
                curve["after_rounds"],
                curve["mean"],
                marker="o",
                linewidth=2,
                linestyle=style,
                color=colour,
                label=proposer,
            )
            low, high = band(curve)
            ax.fill_between(
                curve["after_rounds"], low, high, color=colour, alpha=0.15 if proposer == REFLECTIVE else 0.07
            )
            runs = seeds[seeds["point"].isin(curve["point"]) & (seeds["arm"] == arm)]
            if runs["seed"].nunique() > 1:
                for _, run in runs.groupby("seed"):
                    run = run.sort_values("after_rounds")
                    ax.plot(
                        run["after_rounds"],
                        run["value"],
                        linestyle=style,
                        color=colour,
                        alpha=0.35,
                        linewidth=0.8,
                    )
        several = len(labels) > 1
        ax.set_title("\n".join([arm, *label.split("/")]) if several else arm, fontsize=8)
        ax.set_xlabel("rounds")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    first = next(iter(panels.values()))
    first.set_ylabel(f"validation {metric}")
    first.set_ylim(bottom=0)
    first.legend(fontsize=8)
    return save_figure(fig, out["reflective_vs_blind"])


def section(tables: dict[str, pd.DataFrame], figure_files: dict[str, Path], out: Path) -> list[str]:
    """The report's section on the twins: heading, how to read, the table and the figure (Markdown blocks
    to join with blank lines; figure paths relative to the Markdown file `out`)."""
    heading = "## Does the feedback matter? Reflective GEPA against its blind twin"
    table = tables.get("proposers", pd.DataFrame())
    if table.empty:
        return [heading, HOW_TO_GET_A_TWIN]
    pairs = table[["reflective_point", "blind_point"]].drop_duplicates()
    twins = (
        "Twin pairs (reflective ↔ blind): "
        + "; ".join(f"`{r}` ↔ `{b}`" for r, b in pairs.itertuples(index=False))
        + "."
    )
    shown = [c for c in COLUMNS if c not in ("inside_noise", "reflective_point", "blind_point")]
    if set(table["label"]) == {NO_OTHER_VALUES}:
        shown.remove("label")
    blocks = [heading, HOW_TO_READ, twins, markdown_table(table[shown])]
    for name, title in FIGURES.items():
        if name in figure_files:
            blocks.append(f"![{title}]({Path(figure_files[name]).relative_to(Path(out).parent).as_posix()})")
    return blocks
