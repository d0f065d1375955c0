"""The report's Markdown page: what ran, each question's table with how to read it, the figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst import artifacts
from fst.report import analysis

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

def markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(nothing to show for this experiment)_"
    return frame.to_markdown(index=False, floatfmt=".4g")


def figure_link(title: str, path: Path, out: Path) -> str:
    """A figure link relative to the Markdown page, so the report folder can be moved as a whole."""
    return f"![{title}]({Path(path).relative_to(out.parent).as_posix()})"


def main_sections(
    experiment: str,
    summary: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
) -> list[str]:
    """The main runs' part of the page: what ran, each question's table with how to read it."""
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
        f"Main runs of {experiment}. Sweep points: {', '.join(sorted(summary['point'].unique()))}. Arms: "
        f"{', '.join(sorted(summary['arm'].unique()))}. Seeds: {summary['seed'].nunique()}. "
        f"Evaluation points per run: {summary['after_rounds'].nunique()} "
        f"(after 0..{summary['after_rounds'].max()} rounds). "
        f"Validation metric: {tables['curves']['metric'].iloc[0]}. Every number below is computed "
        "from the runs' eval/ and provenance/ files (summary.parquet); the tables are in tables/*.parquet.",
        "## Noise",
        NOISE,
        "Differences between arms at every round and from start to final per arm (validation):",
        markdown_table(arm_differences[shown] if not arm_differences.empty else arm_differences),
        "## Sample efficiency",
        "Target = arm rl's peak validation reward (mean over seeds). `ratio_rl_steps` = RL steps rl needed "
        "for its peak / RL steps the arm needed to reach it; `ratio_policy_rollouts` the same counting every "
        "policy rollout, GEPA's metric calls included (the honest axis). Reached means at an evaluation "
        "point: between evaluations nothing is known. Per-seed rows are in tables/sample_efficiency.parquet.",
        markdown_table(mean_efficiency.drop(columns=["seed"], errors="ignore")),
        "## Held-out test split",
        "Test mean@k of each arm at its final round and at the round its validation curve selects "
        "(running max: the argmax of validation mean@k, the earliest on ties), sampled with the run's "
        "evaluation seed; `ci95_low`/`ci95_high`: bootstrap over test problems. Never used for any choice.",
        markdown_table(tables["test"]),
        "## Ceiling",
        "4-parameter sigmoid R = R0 + (A − R0)/(1 + (C_mid/C)^B) fitted per arm over all seeds' "
        "evaluation points, C = policy rollouts; `ceiling` is A. With fewer evaluation rounds (`points`: "
        "distinct rounds, not compute values pooled over seeds) than report.min_fit_points the fit is "
        "refused (see `warning`).",
        markdown_table(ceiling),
        "## Drift",
        KL_DEFINITION,
        "Compared at the highest reward every weight-training arm reaches (`matched_reward`); "
        "`kl_reduction_vs_rl` = 1 − KL/KL_rl.",
        markdown_table(tables["drift"]),
        "## Out-of-domain accuracy (forgetting)",
        "Greedy accuracy on other task families with NO system prompt: what the weights kept.",
        markdown_table(tables["ood"]),
        "## Channel decomposition (arm fst, final round)",
        "Validation reward of {base, trained} weights × {seed, evolved} prompt, all four cells sampled with "
        "the run's evaluation seed (so the base weights + seed prompt cell is the run's evaluation before "
        "training): how much of fst's gain sits in the weights and how much in the prompt.",
        markdown_table(tables["decomposition"]),
        "Each cell against base weights + seed prompt (paired bootstrap over problems):",
        markdown_table(cell_differences[shown] if not cell_differences.empty else cell_differences),
        *(
            [
                "## Post-hoc GEPA on the final RL checkpoint (RL→GEPA)",
                "One GEPA round (the same budget) on arm rl's final weights, evaluated with the same "
                "sampling seed as rl's final evaluation: how close does it come to fst, and at what cost in "
                "policy rollouts?",
                markdown_table(tables["posthoc"]),
            ]
            if not tables["posthoc"].empty
            else []
        ),
    ]
    return sections


def page(experiment: str, sections: list[str], titles: dict[str, str], figure_files: dict[str, Path],
         out: Path) -> str:
    """The whole report page: the kinds' sections, then every figure; written to `out`."""
    text = "\n\n".join([
        f"# {experiment}: Fast-Slow Training comparison",
        *sections,
        "## Figures",
        *[figure_link(titles[name], path, out) for name, path in figure_files.items()],
    ]) + "\n"
    artifacts.write_text(text, out)
    return text
