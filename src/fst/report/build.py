"""The comparison report of a whole experiment: its tables (Parquet), figures and Markdown page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fst import artifacts
from fst.evaluate import Bootstrap
from fst.kinds.continual import PREFIX as CONTINUAL_PREFIX
from fst.kinds.plasticity import PREFIX as PLASTICITY_PREFIX
from fst.report import analysis, continual, figures, plasticity, proposers
from fst.report.markdown import main_sections, page
from fst.report.summary import counts_by_run, run_of

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


def figure_titles(kinds: dict) -> dict[str, str]:
    """{figure name: title} of the report of an experiment with these kinds (fst.kinds): the workflow's
    report outputs and the page's figure list. `kinds` as the workflow passes it: "main" and "proposers"
    (a reflective/blind sweep) true or false, "plasticity" and "continual" present when run."""
    titles = dict(figures.TITLES) if kinds.get("main") else {}
    titles |= proposers.FIGURES if kinds.get("main") and kinds.get("proposers") else {}
    titles |= plasticity.FIGURES if "plasticity" in kinds else {}
    titles |= continual.FIGURES if "continual" in kinds else {}
    return titles


def _kind_frames(summary_path: Path, scores_path: Path, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A kind's summary and scores, its run folders (continual-fst, plasticity-from-rl) named by what the
    kind's section compares (the arm fst, the initialisation rl)."""
    frames = pd.read_parquet(summary_path), pd.read_parquet(scores_path)
    return tuple(frame.assign(arm=frame["arm"].str.removeprefix(prefix)) for frame in frames)


def _own(figure_files: dict[str, Path], titles: dict[str, str]) -> dict[str, Path]:
    """The files of one section's figures."""
    return {name: figure_files[name] for name in titles}


def _write(tables: dict[str, pd.DataFrame], table_dir: Path) -> None:
    for name, table in tables.items():
        artifacts.write_parquet(table, Path(table_dir) / f"{name}.parquet")


def build(
    experiment: str,
    summary_path: Path | None,
    decomposition_paths: list[Path],
    posthoc: pd.DataFrame,
    table_dir: Path,
    figure_files: dict[str, Path],
    markdown_path: Path,
    min_fit_points: int,
    scores_path: Path | None,
    decomposition_sample_paths: list[Path],
    bootstrap: Bootstrap,
    kinds: dict | None = None,
    kind_paths: dict[str, tuple[Path, Path]] | None = None,
) -> dict[str, pd.DataFrame]:
    """Every table, figure and the page. The main runs' part needs `summary_path`; each other kind in
    `kinds` (as in figure_titles) its (summary, scores) in `kind_paths`."""
    kinds = kinds if kinds is not None else {"main": True}
    kind_paths = kind_paths or {}
    every, sections = {}, []
    if summary_path is not None:
        full = pd.read_parquet(summary_path)
        cells = read_decomposition(decomposition_paths)
        scores = pd.read_parquet(scores_path)
        tables = analyse(full, cells, min_fit_points, posthoc, scores,
                         read_decomposition_scores(decomposition_sample_paths), bootstrap)
        summary, _ = analysis.with_validation_metric(full)
        draw(summary, cells, tables, figure_files)
        sections += main_sections(experiment, summary, tables)
        every |= tables
        if kinds.get("proposers"):
            twins = proposers.tables(full, scores, bootstrap)
            proposers.draw(summary, twins, figure_files)
            sections += proposers.section(twins, _own(figure_files, proposers.FIGURES), Path(markdown_path))
            every |= twins
    if "plasticity" in kinds:
        summary, scores = _kind_frames(*kind_paths["plasticity"], PLASTICITY_PREFIX)
        tables = plasticity.tables(summary, scores, bootstrap)
        plasticity.draw(summary, tables, figure_files)
        sections += plasticity.section(tables, _own(figure_files, plasticity.FIGURES), Path(markdown_path),
                                      kinds["plasticity"]["task"])
        every |= tables
    if "continual" in kinds:
        summary, scores = _kind_frames(*kind_paths["continual"], CONTINUAL_PREFIX)
        schedule, per_stage = kinds["continual"]["schedule"], kinds["continual"]["rounds_per_stage"]
        tables = continual.tables(summary, scores, schedule, per_stage, bootstrap)
        continual.draw(summary, tables, schedule, per_stage, figure_files)
        sections += continual.section(tables, _own(figure_files, continual.FIGURES), Path(markdown_path))
        every |= tables
    _write(every, table_dir)
    page(experiment, sections, figure_titles(kinds), figure_files, Path(markdown_path))
    return every
