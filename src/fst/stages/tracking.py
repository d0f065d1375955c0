"""Mirroring into MLflow: each evaluation point as it is made, and a backfill of what an outage kept out."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fst import artifacts

log = logging.getLogger("fst")


def cmd_track(args) -> None:
    """Mirror one evaluation point (and the slow metrics that led to it) into MLflow; never fails.

    tracked.json keeps what was sent (the outbox) beside the outcome, so the sync stage can replay
    any point that an outage kept out of MLflow.
    """
    import pandas as pd

    from fst.report.summary import counts_by_run, spent_before
    from fst.tracking import (
        mirror_round,
        point_metrics,
        point_payload,
        resolve_tracking_uri,
        set_quick_failure_env,
    )

    set_quick_failure_env()
    metrics = point_metrics(
        pd.read_parquet(args.eval),
        pd.read_parquet(args.test) if args.test else None,
        artifacts.read_json(args.slow_metrics) if args.slow_metrics else None,
    )
    spent = [spent_before(runs, args.after_rounds) for runs in counts_by_run(args.round_provenance).values()]
    payload = point_payload(
        experiment=args.experiment, point=args.point, arm=args.arm, seed=args.seed,
        after_rounds=args.after_rounds, point_params=json.loads(args.params), metrics=metrics,
        rl_steps=sum(s.rl_steps for s in spent), rollouts=sum(s.policy_rollouts for s in spent),
        files=[f for f in (args.eval, args.population, args.test) if f],
    )  # fmt: skip
    uri = resolve_tracking_uri(args.uri, Path(args.results_dir))
    status = mirror_round(uri, **payload)
    if not status.get("ok"):
        log.warning("MLflow mirror failed (the files are complete; the sync stage fills it in): %s", status)
    artifacts.write_json({**status, "uri": uri, "payload": payload}, args.out)


def cmd_sync_tracking(args) -> None:
    """Backfill every evaluation point an outage kept out of MLflow; attach the report to each point."""
    from fst.tracking import resolve_tracking_uri, set_quick_failure_env, sync_points

    set_quick_failure_env()
    uri = resolve_tracking_uri(args.uri, Path(args.results_dir))
    tracked = [(path, artifacts.read_json(path)) for path in args.tracked]
    report = sync_points(uri, args.experiment, tracked, args.files, "report")
    if report["failed"]:
        log.warning(
            "MLflow unreachable (%s); %d points still to send. Rerun this stage once it is back: "
            "snakemake --forcerun sync_tracking",
            report["failed"][0].get("error"),
            len(report["pending"]) + 1,
        )
    artifacts.write_json(report, args.out)
