"""After the runs: every run's evaluations in one table, and the experiment's report."""

from __future__ import annotations

import json
from pathlib import Path

from fst import artifacts


def cmd_summarize(args) -> None:
    """Summary stage: all runs' evaluations in one table, with RL steps and policy rollouts spent."""
    from fst.report.summary import collect, problem_scores

    artifacts.write_parquet(collect(args.evals, args.round_provenance, args.tests), args.out)
    artifacts.write_parquet(problem_scores(args.samples), args.scores)


def cmd_report(args) -> None:
    """Report stage: the kinds' questions (sample efficiency, ceiling, drift, OOD, decomposition,
    feedback, plasticity, continual learning): tables, figures, Markdown."""
    from fst.evaluate import Bootstrap
    from fst.report import build as report

    kinds = json.loads(args.kinds)
    figure_files = dict(zip(report.figure_titles(kinds), map(Path, args.figures), strict=True))
    posthoc = report.read_posthoc(args.posthoc_evals, args.posthoc_provenance)
    kind_paths = {
        kind: (Path(getattr(args, f"{kind}_summary")), Path(getattr(args, f"{kind}_scores")))
        for kind in ("plasticity", "continual")
        if kind in kinds
    }
    report.build(
        args.experiment,
        args.summary and Path(args.summary),
        args.decomposition,
        posthoc,
        Path(args.tables),
        figure_files,
        Path(args.markdown),
        args.min_fit_points,
        args.scores and Path(args.scores),
        args.decomposition_samples,
        Bootstrap(args.bootstrap_resamples, args.bootstrap_seed),
        kinds,
        kind_paths,
    )
