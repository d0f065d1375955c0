"""Mirror per-round file artifacts into MLflow.

Files written by the workflow are the source of truth; MLflow is a convenience view of them.
Every call is idempotent (rerunning it logs nothing twice) and never raises: a tracking
outage yields a status dict with ``ok: False`` that the stage writes next to its outputs,
so a later rerun can fill in what was missed.
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
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

TAG_PREFIX = "fst."
RUN_KEY_TAG = "fst.run_key"
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


def run_name(run_key: Mapping[str, str]) -> str:
    """Human-readable run name, e.g. ``rl-seed0`` or ``lr3e-5-rl-seed0``."""
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
) -> dict:
    """Mirror one round's params, metrics (at ``step``) and files into MLflow; never raises.

    ``extra_steps={"rollouts": 1234}`` also logs every metric as ``axis_metric_name(m,
    "rollouts")`` at step 1234. Returns a JSON-serialisable status dict.
    """
    status: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_key": dict(run_key),
                              "step": step}
    try:
        status.update(_with_lock_retry(partial(
            _mirror, uri, experiment, run_key, params, metrics, step, list(artifacts),
            extra_steps or {})))
        status["ok"] = True
    except Exception as exc:  # a tracking outage must never fail the workflow
        log.warning("MLflow mirror of %s %s round %s failed: %s", experiment,
                    run_key_string(run_key), step, exc)
        status.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    for warning in status.get("warnings", []):
        log.warning("MLflow mirror: %s", warning)
    return status


def _mirror(uri: str, experiment: str, run_key: Mapping[str, str], params: Mapping,
            metrics: Mapping[str, float], step: int, artifacts: list[Path],
            extra_steps: Mapping[str, int]) -> dict:
    with _sqlite_init_lock(uri):
        client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, experiment)
    run = _find_or_create_run(client, experiment_id, run_key)
    run_id, warnings = run.info.run_id, []

    logged_params = run.data.params
    new_params = []
    for key, value in flatten(params).items():
        if key not in logged_params:
            new_params.append(Param(key, value))
        elif logged_params[key] != value:
            warnings.append(f"param {key!r} already logged as {logged_params[key]!r}, "
                            f"not overwritten with {value!r}")

    metrics = {metric_key(name): value for name, value in metrics.items()}
    wanted = [(name, float(value), step) for name, value in metrics.items()]
    wanted += [(axis_metric_name(name, axis), float(value), axis_step)
               for axis, axis_step in extra_steps.items() for name, value in metrics.items()]
    now_ms = int(time.time() * 1000)
    # Only keys that exist in the run can have history; skip the query for the rest.
    new_metrics = [Metric(key, value, now_ms, s) for key, value, s in wanted
                   if key not in run.data.metrics
                   or all(m.step != s for m in client.get_metric_history(run_id, key))]
    client.log_batch(run_id, metrics=new_metrics, params=new_params)

    artifact_dir = f"round{step}"
    present = {Path(f.path).name: f.file_size for f in client.list_artifacts(run_id, artifact_dir)}
    logged_artifacts = 0
    for path in map(Path, artifacts):
        if not path.is_file():
            warnings.append(f"artifact {str(path)!r} is not a file, skipped")
        elif present.get(path.name) != path.stat().st_size:
            client.log_artifact(run_id, str(path), artifact_dir)
            logged_artifacts += 1
    client.set_terminated(run_id)  # don't leave the run shown as RUNNING between rounds
    return {"run_id": run_id, "experiment_id": experiment_id,
            "logged_params": len(new_params), "logged_metrics": len(new_metrics),
            "skipped_metrics": len(wanted) - len(new_metrics),
            "logged_artifacts": logged_artifacts, "warnings": warnings}


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


def _find_or_create_run(client: MlflowClient, experiment_id: str, run_key: Mapping[str, str]):
    key = run_key_string(run_key)
    found = client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        return found[0]
    tags = {RUN_KEY_TAG: key} | {f"{TAG_PREFIX}{k}": str(v) for k, v in run_key.items()}
    return client.create_run(experiment_id, tags=tags, run_name=run_name(run_key))


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
