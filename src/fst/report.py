"""The comparison report: analysis tables (Parquet + Markdown) and figures for a whole experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst import analysis, artifacts, figures
from fst.summary import counts_by_run, run_of

FIGURES = {
    "reward_vs_rl_steps": "Validation reward against RL optimiser steps",
    "reward_vs_policy_rollouts": "Validation reward against all policy rollouts",
    "kl_vs_reward": "Drift: KL to the base model against validation reward",
    "ood_accuracy": "Out-of-domain accuracy without the evolved prompt",
    "decomposition": "Channel decomposition of arm fst's final round",
    "points": "Final validation reward per sweep point",
}
TABLES = ("curves", "sample_efficiency", "ceiling", "drift", "ood", "decomposition", "posthoc")


def read_decomposition(paths: list[Path]) -> pd.DataFrame:
    """Every fst run's {weights} x {prompt} cells, with the run's point and seed."""
    frames = []
    for path in map(Path, paths):
        frame = pd.read_parquet(path)
        frame["point"], frame["arm"], frame["seed"] = run_of(path, 1)  # <run>/eval/decomposition.parquet
        frames.append(frame)
    columns = ["point", "arm", "seed", "weights", "prompt", "member_id", "metric", "value", "n"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_posthoc(eval_paths: list[Path], provenance_paths: list[Path]) -> pd.DataFrame:
    """Arm rl's post-hoc GEPA evaluations, with the GEPA round's metric calls, one row per run."""
    calls = {
        run: sum(c["metric_calls"] for c in rounds.values())
        for run, rounds in counts_by_run(provenance_paths).items()
    }
    rows = []
    for path in map(Path, eval_paths):
        table = pd.read_parquet(path)
        point, arm, seed = run = run_of(path, 2)  # <run>/posthoc_gepa/after<R>/eval.parquet
        value = table[table["metric"].str.startswith("mean@")]["value"].iloc[0]
        rows.append({"point": point, "seed": seed, "value": float(value), "gepa_calls": calls.get(run, 0)})
    return pd.DataFrame(rows)


def analyse(
    summary: pd.DataFrame, cells: pd.DataFrame, min_fit_points: int, posthoc: pd.DataFrame | None = None
) -> dict[str, pd.DataFrame]:
    summary, metric = analysis.with_validation_metric(summary)
    return {
        "curves": analysis.curves(summary, metric),
        "sample_efficiency": analysis.sample_efficiency_table(summary, metric),
        "ceiling": analysis.ceiling_table(summary, metric, min_fit_points),
        "drift": analysis.drift_table(summary, metric),
        "ood": analysis.ood_table(summary),
        "decomposition": analysis.decomposition_table(cells) if not cells.empty else pd.DataFrame(),
        "posthoc": analysis.posthoc_table(
            summary, metric, posthoc if posthoc is not None else pd.DataFrame()
        ),
    }


def draw(summary: pd.DataFrame, cells: pd.DataFrame, tables: dict[str, pd.DataFrame], out: dict[str, Path]):
    curves, efficiency = tables["curves"], tables["sample_efficiency"]
    figures.reward_curves(summary, curves, efficiency, "rl_steps", out["reward_vs_rl_steps"])
    figures.reward_curves(summary, curves, efficiency, "policy_rollouts", out["reward_vs_policy_rollouts"])
    figures.kl_vs_reward(summary, curves["metric"].iloc[0], tables["drift"], out["kl_vs_reward"])
    figures.ood_accuracy(summary, out["ood_accuracy"])
    figures.decomposition_bars(cells, tables["decomposition"], out["decomposition"])
    figures.point_comparison(curves, out["points"])


def _markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(nothing to show for this experiment)_"
    return frame.to_markdown(index=False, floatfmt=".4g")


def markdown(
    experiment: str,
    summary: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    figure_files: dict[str, Path],
    out: Path,
) -> str:
    """The report as Markdown: what ran, each question's table with how to read it, the figures."""
    efficiency = tables["sample_efficiency"]
    mean_efficiency = efficiency[efficiency["seed"] == "mean"] if not efficiency.empty else efficiency
    ceiling = tables["ceiling"]
    sections = [
        f"# {experiment}: Fast-Slow Training comparison",
        f"Sweep points: {', '.join(sorted(summary['point'].unique()))}. Arms: "
        f"{', '.join(sorted(summary['arm'].unique()))}. Seeds: {summary['seed'].nunique()}. "
        f"Evaluation points per run: {summary['after_rounds'].nunique()} "
        f"(after 0..{summary['after_rounds'].max()} rounds). "
        f"Validation metric: {tables['curves']['metric'].iloc[0]}. Every number below is computed "
        "from the runs' eval/ and provenance/ files (summary.parquet); the tables are in tables/*.parquet.",
        "## Sample efficiency",
        "Target = arm rl's peak validation reward (mean over seeds). `ratio_rl_steps` = RL steps rl needed "
        "for its peak / RL steps the arm needed to reach it; `ratio_policy_rollouts` the same counting every "
        "policy rollout, GEPA's metric calls included (the honest axis). Reached means at an evaluation "
        "point: between evaluations nothing is known. Per-seed rows are in tables/sample_efficiency.parquet.",
        _markdown(mean_efficiency.drop(columns=["seed"], errors="ignore")),
        "## Ceiling",
        "4-parameter sigmoid R = R0 + (A − R0)/(1 + (C_mid/C)^B) fitted per arm over all seeds' "
        "evaluation points, C = policy rollouts; `ceiling` is A. With too few points the fit is refused "
        "(see `warning`).",
        _markdown(ceiling),
        "## Drift",
        "KL(policy ‖ base) per completion token on the policy's own validation samples, at the highest "
        "reward every weight-training arm reaches (`matched_reward`); `kl_reduction_vs_rl` = 1 − KL/KL_rl.",
        _markdown(tables["drift"]),
        "## Out-of-domain accuracy (forgetting)",
        "Greedy accuracy on other task families with NO system prompt: what the weights kept.",
        _markdown(tables["ood"]),
        "## Channel decomposition (arm fst, final round)",
        "Validation reward of {base, trained} weights × {seed, evolved} prompt, all four cells sampled with "
        "one shared seed per run: how much of fst's gain sits in the weights and how much in the prompt.",
        _markdown(tables["decomposition"]),
        *(
            [
                "## Post-hoc GEPA on the final RL checkpoint (RL→GEPA)",
                "One GEPA round (the same budget) on arm rl's final weights, evaluated with the same "
                "sampling seed as rl's final evaluation: how close does it come to fst, and at what cost in "
                "policy rollouts?",
                _markdown(tables["posthoc"]),
            ]
            if not tables["posthoc"].empty
            else []
        ),
        "## Figures",
        *[
            f"![{FIGURES[name]}]({Path(path).relative_to(out.parent).as_posix()})"
            for name, path in figure_files.items()
        ],
    ]
    text = "\n\n".join(sections) + "\n"
    artifacts.write_text(text, out)
    return text


def build(
    experiment: str,
    summary_path: Path,
    decomposition_paths: list[Path],
    posthoc: pd.DataFrame,
    table_dir: Path,
    figure_files: dict[str, Path],
    markdown_path: Path,
    min_fit_points: int,
) -> dict[str, pd.DataFrame]:
    summary, _ = analysis.with_validation_metric(pd.read_parquet(summary_path))
    cells = read_decomposition(decomposition_paths)
    tables = analyse(summary, cells, min_fit_points, posthoc)
    for name, table in tables.items():
        artifacts.write_parquet(table, Path(table_dir) / f"{name}.parquet")
    draw(summary, cells, tables, figure_files)
    markdown(experiment, summary, tables, figure_files, Path(markdown_path))
    return tables
