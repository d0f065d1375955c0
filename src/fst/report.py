"""The comparison report: analysis tables (Parquet + Markdown) and figures for a whole experiment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst import analysis, artifacts, figures
from fst.evaluate import Bootstrap
from fst.summary import counts_by_run, run_of

KL_DEFINITION = (
    "KL is defined once for every arm: the token-level KL(π_θ ‖ π_base) of the temperature-τ "
    "distributions softmax(logits / τ), τ = rollout.temperature, summed exactly over the vocabulary at "
    "each completion token and averaged over tokens, on validation completions sampled from π_θ at τ "
    "in the context of the SEED prompt, whatever the arm's own prompt (`kl_to_base`). The same quantity "
    "in the context of the arm's own prompt is `kl_to_base_own_prompt` (the second column of the "
    "figure). Frozen base weights (arm gepa) have KL exactly 0 by this definition."
)
NOISE = (
    "Every evaluation of a run samples with one seed (common random numbers), so two evaluation points "
    "differ only by weights and prompt. Intervals are 95% percentile bootstraps over the validation "
    "problems (fixed bootstrap seed); a difference is paired: the same problems are resampled for both "
    "sides. A difference whose interval contains 0 is marked *inside the noise*."
)

FIGURES = {
    "reward_vs_rl_steps": "Validation reward against RL steps",
    "reward_vs_policy_rollouts": "Validation reward against all policy rollouts",
    "kl_vs_reward": "Drift: KL to the base model (seed prompt's context; own prompt's) against reward",
    "ood_accuracy": "Out-of-domain accuracy without the evolved prompt",
    "decomposition": "Channel decomposition of arm fst's final round",
    "points": "Final validation reward per sweep point",
}
TABLES = ("curves", "sample_efficiency", "ceiling", "drift", "ood", "decomposition", "posthoc", "test",
          "differences")


def read_decomposition(paths: list[Path]) -> pd.DataFrame:
    """Every fst run's {weights} x {prompt} cells, with the run's point and seed."""
    frames = []
    for path in map(Path, paths):
        frame = pd.read_parquet(path)
        frame["point"], frame["arm"], frame["seed"] = run_of(path, 1)  # <run>/eval/decomposition.parquet
        frames.append(frame)
    columns = ["point", "arm", "seed", "weights", "prompt", "member_id", "metric", "value", "n"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def read_decomposition_scores(paths: list[Path]) -> pd.DataFrame:
    """Per (fst run, weights, prompt, problem): the cell's reward averaged over its k samples."""
    frames = []
    for path in map(Path, paths):
        samples = pd.read_parquet(path, columns=["weights", "prompt", "task", "problem_id", "reward"])
        frame = samples.groupby(["weights", "prompt", "task", "problem_id"], sort=False)["reward"].mean()
        frame = frame.rename("score").reset_index()
        frame["point"], frame["arm"], frame["seed"] = run_of(path, 1)  # <run>/eval/decomposition_samples
        frames.append(frame)
    columns = ["point", "arm", "seed", "weights", "prompt", "task", "problem_id", "score"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


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
    summary: pd.DataFrame,
    cells: pd.DataFrame,
    min_fit_points: int,
    posthoc: pd.DataFrame | None = None,
    scores: pd.DataFrame | None = None,
    cell_scores: pd.DataFrame | None = None,
    bootstrap: Bootstrap | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table of the report. Without per-problem `scores` and a `bootstrap` there are no
    problem intervals and no differences table."""
    test = analysis.test_table(summary)
    summary, metric = analysis.with_validation_metric(summary)
    curves = analysis.curves(summary, metric)
    differences = pd.DataFrame()
    if scores is not None and bootstrap is not None:
        intervals = analysis.problem_intervals(scores, bootstrap)
        curves = curves.merge(intervals, on=["point", "arm", "after_rounds"], how="left")
        cell_scores = cell_scores if cell_scores is not None else pd.DataFrame()
        differences = analysis.differences_table(scores, cell_scores, bootstrap)
    return {
        "curves": curves,
        "sample_efficiency": analysis.sample_efficiency_table(summary, metric),
        "ceiling": analysis.ceiling_table(summary, metric, min_fit_points),
        "drift": analysis.drift_table(summary, metric),
        "ood": analysis.ood_table(summary),
        "decomposition": analysis.decomposition_table(cells) if not cells.empty else pd.DataFrame(),
        "posthoc": analysis.posthoc_table(
            summary, metric, posthoc if posthoc is not None else pd.DataFrame()
        ),
        "test": test,
        "differences": differences,
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
    summary, _ = analysis.with_validation_metric(summary)
    efficiency = tables["sample_efficiency"]
    mean_efficiency = efficiency[efficiency["seed"] == "mean"] if not efficiency.empty else efficiency
    ceiling = tables["ceiling"]
    differences = tables["differences"]
    is_cell = differences["comparison"].str.startswith("decomposition") if not differences.empty else []
    cell_differences = differences[is_cell] if not differences.empty else differences
    arm_differences = differences[~is_cell] if not differences.empty else differences
    shown = ["point", "comparison", "after_rounds", "difference", "ci95_low", "ci95_high", "verdict"]
    sections = [
        f"# {experiment}: Fast-Slow Training comparison",
        f"Sweep points: {', '.join(sorted(summary['point'].unique()))}. Arms: "
        f"{', '.join(sorted(summary['arm'].unique()))}. Seeds: {summary['seed'].nunique()}. "
        f"Evaluation points per run: {summary['after_rounds'].nunique()} "
        f"(after 0..{summary['after_rounds'].max()} rounds). "
        f"Validation metric: {tables['curves']['metric'].iloc[0]}. Every number below is computed "
        "from the runs' eval/ and provenance/ files (summary.parquet); the tables are in tables/*.parquet.",
        "## Noise",
        NOISE,
        "Differences between arms at every round and from start to final per arm (validation):",
        _markdown(arm_differences[shown] if not arm_differences.empty else arm_differences),
        "## Sample efficiency",
        "Target = arm rl's peak validation reward (mean over seeds). `ratio_rl_steps` = RL steps rl needed "
        "for its peak / RL steps the arm needed to reach it; `ratio_policy_rollouts` the same counting every "
        "policy rollout, GEPA's metric calls included (the honest axis). Reached means at an evaluation "
        "point: between evaluations nothing is known. Per-seed rows are in tables/sample_efficiency.parquet.",
        _markdown(mean_efficiency.drop(columns=["seed"], errors="ignore")),
        "## Held-out test split",
        "Test mean@k of each arm at its final round and at the round its validation curve selects "
        "(running max: the argmax of validation mean@k, the earliest on ties), sampled with the run's "
        "evaluation seed; `ci95_low`/`ci95_high`: bootstrap over test problems. Never used for any choice.",
        _markdown(tables["test"]),
        "## Ceiling",
        "4-parameter sigmoid R = R0 + (A − R0)/(1 + (C_mid/C)^B) fitted per arm over all seeds' "
        "evaluation points, C = policy rollouts; `ceiling` is A. With fewer evaluation rounds (`points`: "
        "distinct rounds, not compute values pooled over seeds) than report.min_fit_points the fit is "
        "refused (see `warning`).",
        _markdown(ceiling),
        "## Drift",
        KL_DEFINITION,
        "Compared at the highest reward every weight-training arm reaches (`matched_reward`); "
        "`kl_reduction_vs_rl` = 1 − KL/KL_rl.",
        _markdown(tables["drift"]),
        "## Out-of-domain accuracy (forgetting)",
        "Greedy accuracy on other task families with NO system prompt: what the weights kept.",
        _markdown(tables["ood"]),
        "## Channel decomposition (arm fst, final round)",
        "Validation reward of {base, trained} weights × {seed, evolved} prompt, all four cells sampled with "
        "the run's evaluation seed (so the base weights + seed prompt cell is the run's evaluation before "
        "training): how much of fst's gain sits in the weights and how much in the prompt.",
        _markdown(tables["decomposition"]),
        "Each cell against base weights + seed prompt (paired bootstrap over problems):",
        _markdown(cell_differences[shown] if not cell_differences.empty else cell_differences),
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
    scores_path: Path,
    decomposition_sample_paths: list[Path],
    bootstrap: Bootstrap,
) -> dict[str, pd.DataFrame]:
    full = pd.read_parquet(summary_path)
    cells = read_decomposition(decomposition_paths)
    scores = pd.read_parquet(scores_path)
    tables = analyse(full, cells, min_fit_points, posthoc, scores,
                     read_decomposition_scores(decomposition_sample_paths), bootstrap)
    summary, _ = analysis.with_validation_metric(full)
    for name, table in tables.items():
        artifacts.write_parquet(table, Path(table_dir) / f"{name}.parquet")
    draw(summary, cells, tables, figure_files)
    markdown(experiment, summary, tables, figure_files, Path(markdown_path))
    return tables
