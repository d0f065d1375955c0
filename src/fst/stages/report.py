"""After the runs: every run's evaluations in one table, and the experiment's report."""

from __future__ import annotations

from pathlib import Path

from fst import artifacts


def cmd_summarize(args) -> None:
    """Summary stage: all runs' evaluations in one table, with RL steps and policy rollouts spent."""
    from fst.report.summary import collect, problem_scores

    artifacts.write_parquet(collect(args.evals, args.round_provenance, args.tests), args.out)
    artifacts.write_parquet(problem_scores(args.samples), args.scores)


def cmd_report(args) -> None:
    """Report stage: sample efficiency, ceiling, drift, OOD, decomposition: tables, figures, Markdown."""
    from fst.evaluate import Bootstrap
    from fst.report import build as report
    from fst.report.figures import TITLES

    figure_files = dict(zip(TITLES, map(Path, args.figures), strict=True))
    posthoc = report.read_posthoc(args.posthoc_evals, args.posthoc_provenance)
    report.build(
        args.experiment,
        Path(args.summary),
        args.decomposition,
        posthoc,
        Path(args.tables),
        figure_files,
        Path(args.markdown),
        args.min_fit_points,
        Path(args.scores),
        args.decomposition_samples,
        Bootstrap(args.bootstrap_resamples, args.bootstrap_seed),
    )
