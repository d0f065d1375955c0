"""Mirror per-round file artifacts into MLflow.

Files written by the workflow are the source of truth; MLflow is a convenience view of them.
Every call is idempotent (rerunning it logs nothing twice) and never raises: a tracking
outage yields a status dict with ``ok: False`` that the stage writes next to its outputs,
so a later rerun can fill in what was missed. What the track stage sends for an evaluation point
(``point_metrics``, ``point_payload``) and how the sync stage backfills (``sync_points``) are here too.

Layout: one MLflow experiment per config experiment; in it a parent run per sweep point (run key
``{"point": ...}``, tag ``fst.role=point``) and, nested under it through MLflow's own
``mlflow.parentRunId`` tag, a child run per arm and seed (run key ``{"point", "arm", "seed"}``).
A run is found by its ``fst.run_key`` tag, so the MLflow run ids never need to be stored.
"""

from __future__ import annotations

import fcntl
import logging
import math
import os
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

TAG_PREFIX = "fst."
RUN_KEY_TAG = "fst.run_key"
ROLE_TAG = "fst.role"  # "point" for the parent run of a sweep point, "run" for an arm x seed run
PARENT_TAG = "mlflow.parentRunId"  # MLflow's nesting tag: the UI shows the run under its parent
MAX_PARAM_VALUE_CHARS = 6000  # MLflow rejects longer param values
LOCK_RETRY_BUDGET_S = 30.0


def resolve_tracking_uri(configured: str | None, results_dir: Path) -> str:
    """MLFLOW_TRACKING_URI env var, else config ``tracking.uri``, else a SQLite DB in results."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or configured
        or f"sqlite:///{(Path(results_dir) / 'mlflow.db').resolve()}"
    )


def axis_metric_name(metric: str, axis: str) -> str:
    """Name of ``metric`` logged against a second step axis, e.g. ``reward.at_rollouts``.

    (``reward@rollouts`` would be nicer, but MLflow rejects ``@`` in metric names.)
    """
    return f"{metric}.at_{axis}"


def metric_key(name: str) -> str:
    """`name` as MLflow accepts it: "mean@4" becomes "mean_at_4", other invalid characters "_"."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


def run_key_string(run_key: Mapping[str, str]) -> str:
    """Canonical, order-independent form of a run key, stored as the ``fst.run_key`` tag."""
    return ",".join(f"{k}={run_key[k]}" for k in sorted(run_key))


def _is_point(run_key: Mapping[str, str]) -> bool:
    return set(run_key) == {"point"}


def run_name(run_key: Mapping[str, str]) -> str:
    """Human-readable run name, e.g. ``rl-seed0`` or ``lr3e-5-rl-seed0``; a point's run is the point."""
    if _is_point(run_key):
        return run_key["point"]
    return "-".join(f"seed{v}" if k == "seed" else str(v) for k, v in run_key.items()
                    if (k, v) != ("point", "default"))


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"slow": {"learning_rate": 1e-5}}`` -> ``{"slow.learning_rate": "1e-05"}``."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value)[:MAX_PARAM_VALUE_CHARS]
    return flat


def set_quick_failure_env() -> None:
    """MLflow's defaults retry a dead tracking server for minutes; a stage gives up quickly instead
    (the files stay complete and the sync stage fills in what was missed). No network: no telemetry."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def evaluation_metrics(table, prefix: str = "") -> dict[str, float]:
    """MLflow metrics of an evaluation table: each value, and its 95% interval where it has one.

    Named `<task>/<metric>` (unique in an evaluation table), not by the prompt's member id: the arm's
    prompt changes from round to round, and its curve must stay one metric."""
    metrics = {}
    for row in table.itertuples():
        name = f"{prefix}{row.task}/{row.metric}"
        metrics[name] = float(row.value)
        for bound in ("ci95_low", "ci95_high"):
            value = getattr(row, bound, float("nan"))
            if not math.isnan(value):
                metrics[f"{name}/{bound}"] = float(value)
    return metrics


def point_metrics(evaluation, test=None, slow: Mapping[str, Any] | None = None) -> dict[str, float]:
    """MLflow metrics of one evaluation point: its evaluation table's, the held-out test table's
    (mirrored with the final point) per selection under ``test/<selection>/``, and the numeric metrics
    of the slow stage that led to it under ``train/``."""
    metrics = evaluation_metrics(evaluation)
    if test is not None:
        for selection, rows in test.groupby("selection"):
            metrics |= evaluation_metrics(rows, f"test/{selection}/")
            metrics[f"test/{selection}/after_rounds"] = float(rows["after_rounds"].iloc[0])
    if slow:
        metrics.update({f"train/{k}": float(v) for k, v in slow.items() if isinstance(v, int | float)})
    return metrics


def point_payload(
    *,
    experiment: str,
    point: str,
    arm: str,
    seed: int,
    after_rounds: int,
    point_params: Mapping,
    metrics: dict[str, float],
    rl_steps: int,
    rollouts: int,
    files: Iterable,
) -> dict:
    """The arguments of ``mirror_round`` for one evaluation point of an arm x seed run (JSON-serialisable).

    ``point_params`` is the point's ``{"swept": ..., "config": ...}``: the run gets the config, the
    point's parent run also what was swept. ``rl_steps`` and ``rollouts`` spent before the point are
    its second and third step axes; ``files`` are attached to the run.
    """
    return {
        "experiment": experiment,
        "run_key": {"point": point, "arm": arm, "seed": str(seed)},
        "parent_key": {"point": point},
        "params": flatten(point_params["config"]),
        "parent_params": flatten({"swept": point_params["swept"]}) | flatten(point_params["config"]),
        "metrics": metrics,
        "step": after_rounds,
        "extra_steps": {"rl_steps": rl_steps, "rollouts": rollouts},
        "artifacts": [str(f) for f in files],
    }


def mirror_round(
    uri: str,
    experiment: str,
    run_key: dict[str, str],
    params: dict,
    metrics: dict[str, float],
    step: int,
    artifacts: Iterable[Path] = (),
    extra_steps: dict[str, int] | None = None,
    parent_key: dict[str, str] | None = None,
    parent_params: dict | None = None,
) -> dict:
    """Mirror one round's params, metrics (at ``step``) and files into MLflow; never raises.

    ``extra_steps={"rollouts": 1234}`` also logs every metric as ``axis_metric_name(m,
    "rollouts")`` at step 1234. With ``parent_key`` (``{"point": ...}``) the run is nested under
    that point's run, found or created, which gets ``parent_params``. Returns a
    JSON-serialisable status dict.
    """
    status: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_key": dict(run_key),
                              "step": step}
    if parent_key is not None:
        status["parent_key"] = dict(parent_key)
    return _guarded(f"mirror of round {step}", status, partial(
        _mirror, uri, experiment, run_key, params, metrics, step, list(artifacts),
        extra_steps or {}, parent_key, parent_params or {}))


def attach_files(
    uri: str, experiment: str, run_key: dict[str, str], files: Iterable[Path], artifact_dir: str
) -> dict:
    """Log ``files`` into the run of ``run_key`` (a point's or an arm x seed one) under ``artifact_dir``.

    A file already there with the same size is not uploaded again; a missing one is a warning.
    Never raises; returns a JSON-serialisable status dict like ``mirror_round``.
    """
    status: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_key": dict(run_key),
                              "artifact_dir": artifact_dir}
    return _guarded(f"upload to {artifact_dir}", status, partial(
        _attach, uri, experiment, run_key, list(files), artifact_dir))


def sync_points(
    uri: str,
    experiment: str,
    tracked: Iterable[tuple[str, Mapping]],
    files: Iterable[Path],
    artifact_dir: str,
) -> dict:
    """Backfill every evaluation point not yet mirrored into ``uri``; then attach ``files`` to each point.

    ``tracked``: (path, record) of each point's tracked.json, the track stage's status beside the payload
    it sent. A point already sent to ``uri`` is skipped, any other one is sent again. The first failure
    is enough to know the server is down: the points after it are left pending and nothing is attached.
    Never raises; returns the sync report (``ok``, ``backfilled``, ``failed``, ``pending``,
    ``report_attached``).
    """
    files = [Path(f) for f in files]
    backfilled, pending, failed, points = [], [], [], {}
    for path, record in tracked:
        points[record["payload"]["parent_key"]["point"]] = record["payload"]["parent_key"]
        if record.get("ok") and record.get("uri") == uri:
            continue
        if failed:  # one failure is enough to know the server is down: don't wait on every point
            pending.append(str(path))
            continue
        status = mirror_round(uri, **record["payload"])
        (backfilled if status.get("ok") else failed).append({"tracked": str(path), **status})
    attached = []
    for key in points.values() if not failed else []:
        attached.append(attach_files(uri, experiment, key, files, artifact_dir))
        if not attached[-1].get("ok"):
            failed.append(attached[-1])
            break
    return {
        "uri": uri,
        "ok": not failed,
        "backfilled": backfilled,
        "failed": failed,
        "pending": pending,
        "report_attached": attached,
    }


def _guarded(action: str, status: dict[str, Any], work: Callable[[], dict]) -> dict:
    """``status`` updated with what ``work`` returns and ``ok``; a failure is ``ok: False``, not raised."""
    try:
        status.update(_with_lock_retry(work))
        status["ok"] = True
    except Exception as exc:  # a tracking outage must never fail the workflow
        log.warning("MLflow %s for %s %s failed: %s", action, status["experiment"],
                    run_key_string(status["run_key"]), exc)
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    for warning in status.get("warnings", []):
        log.warning("MLflow %s: %s", action, warning)
    return status


def _client(uri: str) -> MlflowClient:
    with _sqlite_init_lock(uri):
        return MlflowClient(tracking_uri=uri)


def _mirror(uri: str, experiment: str, run_key: Mapping[str, str], params: Mapping,
            metrics: Mapping[str, float], step: int, artifacts: list[Path],
            extra_steps: Mapping[str, int], parent_key: Mapping[str, str] | None,
            parent_params: Mapping) -> dict:
    metrics = {metric_key(name): value for name, value in metrics.items()}
    wanted = [(name, float(value), step) for name, value in metrics.items()]
    wanted += [(axis_metric_name(name, axis), float(value), axis_step)
               for axis, axis_step in extra_steps.items() for name, value in metrics.items()]

    def one_pass(client: MlflowClient, runs: _Runs) -> dict:
        warnings: list[str] = []
        result: dict[str, Any] = {}
        parent_id = None
        if parent_key is not None:
            parent = runs.get(parent_key)
            parent_id = parent.info.run_id
            logged_parent_params = _log_new_params(client, parent, parent_params, warnings)
            client.set_terminated(parent_id)
            result.update(parent_run_id=parent_id, logged_parent_params=logged_parent_params)
        run = runs.get(run_key, parent_id)
        run_id = run.info.run_id
        logged_params = _log_new_params(client, run, params, warnings)
        now_ms = int(time.time() * 1000)
        # Only keys that exist in the run can have history; skip the query for the rest.
        new_metrics = [Metric(key, value, now_ms, s) for key, value, s in wanted
                       if key not in run.data.metrics
                       or all(m.step != s for m in client.get_metric_history(run_id, key))]
        client.log_batch(run_id, metrics=new_metrics)
        uploads = _upload_new_files(client, run_id, artifacts, f"round{step}", warnings)
        client.set_terminated(run_id)  # don't leave the run shown as RUNNING between rounds
        return {**result, "run_id": run_id, "logged_params": logged_params,
                "logged_metrics": len(new_metrics), "skipped_metrics": len(wanted) - len(new_metrics),
                **uploads, "warnings": warnings}

    return _settled(uri, experiment, one_pass)


def _attach(uri: str, experiment: str, run_key: Mapping[str, str], files: list[Path],
            artifact_dir: str) -> dict:
    def one_pass(client: MlflowClient, runs: _Runs) -> dict:
        run_id = runs.get(run_key).info.run_id
        warnings: list[str] = []
        uploads = _upload_new_files(client, run_id, files, artifact_dir, warnings)
        client.set_terminated(run_id)  # a run created here would otherwise stay RUNNING
        return {"run_id": run_id, **uploads, "warnings": warnings}

    return _settled(uri, experiment, one_pass)


def _earliest_run(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    """The earliest-started active run tagged ``key`` (run id breaks ties), or None."""
    runs = client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'")
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id), default=None)


class _Runs:
    """Finds or creates an experiment's runs by run key; remembers the runs it used and created."""

    def __init__(self, client: MlflowClient, experiment_id: str):
        self.client, self.experiment_id = client, experiment_id
        self.used: dict[str, str] = {}  # run key string -> run id
        self.created: set[str] = set()

    def get(self, run_key: Mapping[str, str], parent_run_id: str | None = None) -> Run:
        """The run tagged with ``run_key``, created if missing, nested under ``parent_run_id`` if given."""
        key = run_key_string(run_key)
        run = _earliest_run(self.client, self.experiment_id, key)
        if run is None:
            tags = {RUN_KEY_TAG: key, ROLE_TAG: "point" if _is_point(run_key) else "run"}
            tags |= {f"{TAG_PREFIX}{k}": str(v) for k, v in run_key.items()}
            if parent_run_id is not None:
                tags[PARENT_TAG] = parent_run_id
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name(run_key))
            self.created.add(run.info.run_id)
        elif parent_run_id is not None and run.data.tags.get(PARENT_TAG) != parent_run_id:
            self.client.set_tag(run.info.run_id, PARENT_TAG, parent_run_id)
        self.used[key] = run.info.run_id
        return run

    def lost(self) -> set[str]:
        """The used runs that are not the earliest-started with their key (any more)."""
        lost = set()
        for key, run_id in self.used.items():
            earliest = _earliest_run(self.client, self.experiment_id, key)
            if earliest is None or earliest.info.run_id != run_id:
                lost.add(run_id)
        return lost


def _settled(uri: str, experiment: str, one_pass: Callable[[MlflowClient, _Runs], dict]) -> dict:
    """``one_pass`` redone until the runs it used are the earliest-started ones with their keys.

    Jobs running at once (several arms of one point share its run) may each create the same run.
    After its pass a job checks that every run it used is the earliest with its key; if not, it
    deletes the runs of those it created and does the pass again (idempotent) into the earliest
    ones. So all jobs end up in one run per key, unless a job's check comes before a concurrent
    create with an earlier start time is stored, i.e. that create stalled for longer than a whole
    pass; the duplicate then stays, and a later rerun nests the children under the earliest run.
    """
    client = _client(uri)
    experiment_id = _experiment_id(client, experiment)
    while True:
        runs = _Runs(client, experiment_id)
        result = one_pass(client, runs)
        lost = runs.lost()
        if not lost:
            return {"experiment_id": experiment_id, **result}
        for run_id in lost & runs.created:
            client.delete_run(run_id)
        log.info("MLflow: a concurrent job created the same run first; mirroring into that one")


def _log_new_params(client: MlflowClient, run: Run, params: Mapping, warnings: list[str]) -> int:
    """Log the flattened ``params`` that ``run`` lacks; a differing logged value is kept, with a warning.

    Returns how many were logged. Jobs of one point log its params at once: when another job's
    write of the same key lands first, the store refuses the batch, so it is retried with the keys
    still missing.
    """
    new = _new_params(run.data.params, params, warnings)
    try:
        client.log_batch(run.info.run_id, params=new)
    except MlflowException:
        new = _new_params(client.get_run(run.info.run_id).data.params, params, warnings=[])
        client.log_batch(run.info.run_id, params=new)
    return len(new)


def _new_params(logged: Mapping[str, str], params: Mapping, warnings: list[str]) -> list[Param]:
    new = []
    for key, value in flatten(params).items():
        if key not in logged:
            new.append(Param(key, value))
        elif logged[key] != value:
            warnings.append(f"param {key!r} already logged as {logged[key]!r}, "
                            f"not overwritten with {value!r}")
    return new


def _upload_new_files(client: MlflowClient, run_id: str, files: Iterable[Path], artifact_dir: str,
                      warnings: list[str]) -> dict[str, int]:
    """Upload the files not already in ``artifact_dir`` with the same size; count both kinds."""
    present = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, artifact_dir)}
    counts = {"logged_artifacts": 0, "skipped_artifacts": 0}
    for path in map(Path, files):
        if not path.is_file():
            warnings.append(f"artifact {str(path)!r} is not a file, skipped")
        elif present.get(path.name) == path.stat().st_size:
            counts["skipped_artifacts"] += 1
        else:
            client.log_artifact(run_id, str(path), artifact_dir)
            counts["logged_artifacts"] += 1
    return counts


def _experiment_id(client: MlflowClient, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(client, name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # another job created it


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith(prefix := "sqlite:///"):
        return None
    return Path(uri.removeprefix(prefix).split("?")[0]).resolve()


@contextmanager
def _sqlite_init_lock(uri: str) -> Iterator[None]:
    """Guard MlflowClient creation against concurrent creation of a new SQLite DB.

    A client creates and migrates a missing DB schema, and concurrent first connects corrupt it
    for good (duplicate ALTER TABLE, leftover ``_alembic_tmp_*`` tables). The creator holds an
    exclusive lock; clients of an existing DB share the lock, so they only wait for a creator.
    """
    db = _sqlite_path(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f"{db.name}.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_SH if db.exists() else fcntl.LOCK_EX)
        yield  # the lock is released when the file is closed


def _artifact_location(client: MlflowClient, experiment: str) -> str | None:
    """For a SQLite store, keep artifacts beside the DB (MLflow's default is the cwd's mlruns)."""
    db = _sqlite_path(client.tracking_uri)
    return None if db is None else (db.parent / "mlartifacts" / experiment).as_uri()


def _with_lock_retry(fn: Callable[[], dict], budget_s: float = LOCK_RETRY_BUDGET_S) -> dict:
    """Retry ``fn`` on SQLite "database is locked" with jittered exponential backoff."""
    deadline, delay = time.monotonic() + budget_s, 0.25
    while True:
        try:
            return fn()
        except Exception as exc:
            if "database is locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            log.info("MLflow store locked, retrying in ~%.1f s", delay)
            time.sleep(min(delay * random.uniform(0.5, 1.5), max(deadline - time.monotonic(), 0)))
            delay = min(delay * 2, 8.0)
