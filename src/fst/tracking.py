"""Mirror per-round file artifacts into MLflow.

Files written by the workflow are the source of truth; MLflow is a convenience view of them.
Every call is idempotent (rerunning it logs nothing twice) and never raises: a tracking
outage yields a status dict with ``ok: False`` that the stage writes next to its outputs,
so a later rerun can fill in what was missed.

Layout: one MLflow experiment per config experiment; in it a parent run per sweep point (run key
``{"point": ...}``, tag ``fst.role=point``) and, nested under it through MLflow's own
``mlflow.parentRunId`` tag, a child run per arm and seed (run key ``{"point", "arm", "seed"}``).
A run is found by its ``fst.run_key`` tag, so the MLflow run ids never need to be stored.
"""

from __future__ import annotations

import fcntl
import logging
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
