"""fst.tracking against a real MLflow SQLite store and a real `mlflow server` on loopback.

One SQLite DB and one server per module: creating a DB takes ~2 s, starting the server 10-20 s.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType
from mlflow_server import MlflowServer

import fst
from fst.tracking import (
    _with_lock_retry,
    attach_files,
    axis_metric_name,
    mirror_round,
    resolve_tracking_uri,
)

KEY = {"point": "default", "arm": "rl", "seed": "0"}
POINT = {"point": "default"}
METRICS = {"reward": 0.5, "accuracy": 0.25}
# What set_quick_failure_env sets, so that a stage gives up on a dead tracking server quickly.
OUTAGE_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _sqlite_uri(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'mlflow.db'}"


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return _sqlite_uri(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module", autouse=True)
def quiet_mlflow():
    """No telemetry (as in set_quick_failure_env), and no run URL printed at each run's end by the client."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        yield


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    print(f"\nmlflow server answered after {server.start():.1f} s")
    yield server
    server.stop()


class Store(NamedTuple):
    uri: str
    artifacts: Path  # the folder the store keeps artifact files in


@pytest.fixture(params=["sqlite", "server"])
def store(request) -> Store:
    if request.param == "sqlite":
        uri = request.getfixturevalue("uri")
        return Store(uri, Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts")
    server = request.getfixturevalue("mlflow_server")
    return Store(server.uri, server.artifacts)


@pytest.fixture
def experiment(request) -> str:
    return request.node.name


def _mirror(uri, experiment, key=KEY, step=0, **kwargs):
    status = mirror_round(
        uri, experiment, key, kwargs.pop("params", {}), kwargs.pop("metrics", METRICS), step, **kwargs
    )
    json.dumps(status)  # the stage writes it to a file
    assert status["ok"], status
    return status


def _runs(uri, experiment):
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_run_created_once_then_found(uri, experiment):
    first = _mirror(uri, experiment, step=0)
    second = _mirror(uri, experiment, step=1)
    assert first["run_id"] == second["run_id"]
    (run,) = _runs(uri, experiment)
    assert run.info.run_name == "rl-seed0"
    assert run.data.tags["fst.arm"] == "rl"
    assert run.data.tags["fst.seed"] == "0"
    assert run.data.tags["fst.point"] == "default"
    assert run.data.tags["fst.run_key"] == "arm=rl,point=default,seed=0"


def test_rerun_does_not_duplicate_metric_points(uri, experiment):
    first = _mirror(uri, experiment, extra_steps={"rollouts": 64})
    again = _mirror(uri, experiment, extra_steps={"rollouts": 64})
    assert (first["logged_metrics"], first["skipped_metrics"]) == (4, 0)
    assert (again["logged_metrics"], again["skipped_metrics"]) == (0, 4)
    _mirror(uri, experiment, step=1, extra_steps={"rollouts": 128})
    client = MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(first["run_id"], "reward")] == [0, 1]
    rollouts = client.get_metric_history(first["run_id"], axis_metric_name("reward", "rollouts"))
    assert [m.step for m in rollouts] == [64, 128]


def test_two_keys_make_two_runs(uri, experiment):
    a = _mirror(uri, experiment)
    b = _mirror(uri, experiment, key={"point": "lr3e-5", "arm": "rl", "seed": "1"})
    assert a["run_id"] != b["run_id"]
    names = sorted(r.info.run_name for r in _runs(uri, experiment))
    assert names == ["lr3e-5-rl-seed1", "rl-seed0"]


def test_params_logged_once_and_conflicts_warned(uri, experiment):
    params = {"slow": {"learning_rate": 1e-5}, "fast.beta": 0.1}
    first = _mirror(uri, experiment, params=params)
    assert first["logged_params"] == 2 and first["warnings"] == []
    changed = _mirror(uri, experiment, step=1, params={"slow.learning_rate": 2e-5})
    assert changed["logged_params"] == 0
    assert "slow.learning_rate" in changed["warnings"][0]
    logged = MlflowClient(uri).get_run(first["run_id"]).data.params
    assert logged == {"slow.learning_rate": "1e-05", "fast.beta": "0.1"}


def test_artifacts_under_round_dir_beside_db(uri, experiment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root would be ./mlruns
    out = tmp_path / "metrics.json"
    out.write_text('{"reward": 0.5}')
    first = _mirror(uri, experiment, step=2, artifacts=[out, tmp_path / "missing.json"])
    again = _mirror(uri, experiment, step=2, artifacts=[out])
    assert (first["logged_artifacts"], again["logged_artifacts"]) == (1, 0)
    assert "missing.json" in first["warnings"][0]
    client = MlflowClient(uri)
    assert [f.path for f in client.list_artifacts(first["run_id"], "round2")] == ["round2/metrics.json"]
    assert not (tmp_path / "mlruns").exists()
    db_dir = Path(uri.removeprefix("sqlite:///")).parent
    assert (db_dir / "mlartifacts" / experiment).is_dir()


POINTS = [("0.0001", "4"), ("0.0001", "8"), ("1e-05", "4"), ("1e-05", "8")]


def _point(learning_rate, group_size):
    return f"slow.learning_rate~{learning_rate}/rollout.group_size~{group_size}"


def test_parent_run_per_point_child_per_arm_and_seed(store, experiment):
    for learning_rate, group_size in POINTS:
        point = _point(learning_rate, group_size)
        swept = {"slow.learning_rate": learning_rate, "rollout.group_size": group_size}
        for arm in ("rl", "fst"):
            for seed in ("0", "1"):
                _mirror(
                    store.uri,
                    experiment,
                    {"point": point, "arm": arm, "seed": seed},
                    params={"arm": arm, **swept},
                    parent_key={"point": point},
                    parent_params=swept,
                )
    runs = _runs(store.uri, experiment)
    parents = {r.info.run_name: r for r in runs if r.data.tags["fst.role"] == "point"}
    assert sorted(parents) == sorted(_point(*p) for p in POINTS)
    for learning_rate, group_size in POINTS:
        parent = parents[_point(learning_rate, group_size)]
        assert parent.data.params == {"slow.learning_rate": learning_rate, "rollout.group_size": group_size}
        assert parent.data.tags["fst.run_key"] == f"point={_point(learning_rate, group_size)}"
        assert parent.info.status == "FINISHED"
        assert "mlflow.parentRunId" not in parent.data.tags
    children = [r for r in runs if r.data.tags["fst.role"] == "run"]
    nesting = {
        (c.data.tags["fst.point"], c.data.tags["fst.arm"], c.data.tags["fst.seed"]): c.data.tags[
            "mlflow.parentRunId"
        ]
        for c in children
    }
    assert len(children) == len(nesting) == 16
    assert nesting == {
        (point, arm, seed): parents[point].info.run_id
        for point in parents
        for arm in ("rl", "fst")
        for seed in ("0", "1")
    }
    assert all(
        c.info.status == "FINISHED" and c.data.params["arm"] == c.data.tags["fst.arm"] for c in children
    )


def _stored_copy(store, run_id, name) -> Path:
    (path,) = [p for p in store.artifacts.rglob(name) if run_id in p.parts]
    return path


def test_rerun_logs_nothing_twice(store, experiment, tmp_path):
    out = tmp_path / "metrics.json"
    out.write_text('{"reward": 0.5}')
    point_params = {"slow": {"learning_rate": 1e-5}}
    kwargs = dict(
        params={"arm": "rl"},
        extra_steps={"rollouts": 64},
        artifacts=[out],
        parent_key=POINT,
        parent_params=point_params,
    )
    first = _mirror(store.uri, experiment, **kwargs)
    stored = _stored_copy(store, first["run_id"], out.name)
    uploaded_at = stored.stat().st_mtime_ns
    again = _mirror(store.uri, experiment, **kwargs)

    counts = ("logged_parent_params", "logged_params", "logged_metrics", "skipped_metrics")
    counts += ("logged_artifacts", "skipped_artifacts")
    assert [first[k] for k in counts] == [1, 1, 4, 0, 1, 0]
    assert [again[k] for k in counts] == [0, 0, 0, 4, 0, 1]
    assert (again["run_id"], again["parent_run_id"]) == (first["run_id"], first["parent_run_id"])
    assert stored.stat().st_mtime_ns == uploaded_at and stored.read_text() == out.read_text()
    assert len(_runs(store.uri, experiment)) == 2
    client = MlflowClient(store.uri)
    for key in ("reward", "accuracy", "reward.at_rollouts", "accuracy.at_rollouts"):
        assert len(client.get_metric_history(first["run_id"], key)) == 1, key
    assert client.get_run(first["parent_run_id"]).data.params == {"slow.learning_rate": "1e-05"}
    assert client.get_run(first["run_id"]).data.params == {"arm": "rl"}


def test_attach_files_to_point_run(store, experiment, tmp_path):
    child = _mirror(store.uri, experiment, parent_key=POINT)
    files = [tmp_path / name for name in ("reward_curves.png", "population.json", "report.md")]
    for path in files:
        path.write_text(path.name)
    first = attach_files(store.uri, experiment, POINT, [*files, tmp_path / "missing.html"], "report")
    json.dumps(first)
    assert first["ok"] and first["run_id"] == child["parent_run_id"], first
    assert (first["logged_artifacts"], first["skipped_artifacts"]) == (3, 0)
    assert "missing.html" in first["warnings"][0]
    files[2].write_text("the report, rewritten")
    again = attach_files(store.uri, experiment, POINT, files, "report")
    assert (again["logged_artifacts"], again["skipped_artifacts"]) == (1, 2)
    client = MlflowClient(store.uri)
    listed = [f.path for f in client.list_artifacts(first["run_id"], "report")]
    assert sorted(listed) == ["report/population.json", "report/report.md", "report/reward_curves.png"]
    assert _stored_copy(store, first["run_id"], "report.md").read_text() == "the report, rewritten"
    to_child = attach_files(store.uri, experiment, KEY, files[:1], "figures")
    assert to_child["ok"] and to_child["run_id"] == child["run_id"], to_child
    assert len(_runs(store.uri, experiment)) == 2
    assert client.get_run(first["run_id"]).info.status == "FINISHED"


def test_existing_run_is_nested_when_a_parent_is_given(uri, experiment):
    plain = _mirror(uri, experiment)
    nested = _mirror(uri, experiment, step=1, parent_key=POINT)
    assert nested["run_id"] == plain["run_id"]
    tags = MlflowClient(uri).get_run(plain["run_id"]).data.tags
    assert tags["mlflow.parentRunId"] == nested["parent_run_id"]


def test_earliest_started_run_of_a_key_is_used_and_children_move_to_it(uri, experiment):
    """Duplicate runs of one point (a lost creation race): every job picks the earliest-started."""
    client = MlflowClient(uri)
    child = _mirror(uri, experiment, parent_key=POINT)
    experiment_id = child["experiment_id"]
    tags = {"fst.run_key": "point=default", "fst.role": "point"}
    earlier = client.create_run(experiment_id, start_time=1000, tags=tags)
    client.create_run(experiment_id, start_time=2000, tags=tags)
    again = _mirror(uri, experiment, step=1, parent_key=POINT)
    assert again["parent_run_id"] == earlier.info.run_id != child["parent_run_id"]
    assert client.get_run(child["run_id"]).data.tags["mlflow.parentRunId"] == earlier.info.run_id
    assert attach_files(uri, experiment, POINT, [], "report")["run_id"] == earlier.info.run_id


def test_outage_then_backfill(mlflow_server, experiment, tmp_path, monkeypatch):
    """The server goes down: mirroring returns not-ok quickly; once it is back, rerunning every
    round fills in exactly the missing points."""
    for name, value in OUTAGE_ENV.items():
        monkeypatch.setenv(name, value)
    uri = mlflow_server.uri
    curve = tmp_path / "reward_curves.png"
    curve.write_text("curve")

    def mirror(step):
        return mirror_round(
            uri,
            experiment,
            KEY,
            {"arm": "rl"},
            {"reward": step / 10},
            step,
            extra_steps={"rollouts": 64 * (step + 1)},
            parent_key=POINT,
            parent_params={"slow.learning_rate": "1e-05"},
        )

    assert mirror(0)["ok"]
    mlflow_server.stop()
    try:
        started = time.monotonic()
        down = [mirror(1), attach_files(uri, experiment, POINT, [curve], "figures")]
        elapsed = time.monotonic() - started
        print(f"\ntwo calls against the stopped server returned not-ok after {elapsed:.1f} s")
        json.dumps(down)
        assert [s["ok"] for s in down] == [False, False] and all(s["error"] for s in down)
        assert elapsed < 60
    finally:
        mlflow_server.start()

    backfill = [mirror(step) for step in range(3)]
    assert all(s["ok"] for s in backfill), backfill
    assert [s["logged_metrics"] for s in backfill] == [0, 2, 2]
    assert attach_files(uri, experiment, POINT, [curve], "figures")["logged_artifacts"] == 1
    client = MlflowClient(uri)
    run_id = backfill[0]["run_id"]
    history = client.get_metric_history(run_id, "reward")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 0.1), (2, 0.2)]
    rollouts = client.get_metric_history(run_id, axis_metric_name("reward", "rollouts"))
    assert sorted(m.step for m in rollouts) == [64, 128, 192]
    assert len(_runs(uri, experiment)) == 2


def test_unreachable_server_returns_not_ok(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    status = mirror_round("http://127.0.0.1:9", "exp", KEY, {"a": 1}, METRICS, 0)
    assert status["ok"] is False and status["error"]
    json.dumps(status)


ONE_POINT_PARENT = {"parent_key": {"point": "p"}, "parent_params": {"lr": "1e-05"}}


def test_concurrent_processes_on_a_fresh_db(tmp_path):
    """Concurrent first connects must not corrupt the new DB's schema migration, and jobs of one
    point that start together must end up under one run of that point."""
    uri = _sqlite_uri(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(fst.__file__).parents[1])}
    code = (
        "import json, sys; from fst.tracking import mirror_round; "
        "print(json.dumps(mirror_round(sys.argv[1], 'exp', {'point': 'p', 'arm': 'rl', 'seed': sys.argv[2]}, "
        f"{{}}, {{'reward': 1.0}}, 0, **{ONE_POINT_PARENT!r})))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, str(seed)], stdout=subprocess.PIPE, text=True, env=env
        )
        for seed in range(3)
    ]
    statuses = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(s["ok"] for s in statuses), statuses
    _assert_one_point_run_with_children(uri, "exp", "p", 3)


def _assert_one_point_run_with_children(uri, experiment, point, n_children):
    runs = _runs(uri, experiment)
    (parent,) = [r for r in runs if r.data.tags["fst.role"] == "point"]
    assert parent.data.tags["fst.point"] == point and parent.data.params == {"lr": "1e-05"}
    children = [r for r in runs if r.data.tags["fst.role"] == "run"]
    assert len(children) == n_children
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.data.metrics == {"reward": 1.0} for c in children)


def test_concurrent_jobs_of_one_point_share_its_run(mlflow_server, experiment):
    """Jobs of one point that start together on a server: one run of the point, all nested in it."""
    keys = [{"point": "p", "arm": arm, "seed": seed} for arm in ("rl", "fst", "gepa") for seed in "01"]

    def job(key):
        return mirror_round(mlflow_server.uri, experiment, key, {}, {"reward": 1.0}, 0, **ONE_POINT_PARENT)

    with ThreadPoolExecutor(len(keys)) as pool:
        statuses = list(pool.map(job, keys))
    assert all(s["ok"] for s in statuses), statuses
    _assert_one_point_run_with_children(mlflow_server.uri, experiment, "p", len(keys))
    client = MlflowClient(mlflow_server.uri)
    deleted = client.search_runs([statuses[0]["experiment_id"]], run_view_type=ViewType.DELETED_ONLY)
    print(f"\n{len(deleted)} runs created concurrently and deleted as duplicates")


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    expected_default = f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert resolve_tracking_uri(None, tmp_path) == expected_default
    assert resolve_tracking_uri("http://tracking:5000", tmp_path) == "http://tracking:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert resolve_tracking_uri("http://tracking:5000", tmp_path) == "sqlite:///env.db"


def test_locked_database_is_retried_within_budget():
    failures = iter(range(2))

    def flaky():
        if next(failures, None) is not None:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return {"done": True}

    def always_locked():
        raise RuntimeError("database is locked")

    assert _with_lock_retry(flaky, budget_s=5) == {"done": True}
    with pytest.raises(RuntimeError, match="locked"):
        _with_lock_retry(always_locked, budget_s=0.3)
