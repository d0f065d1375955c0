"""fst.tracking against a real MLflow SQLite store (one DB per module: creating one takes ~2 s)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

import fst
from fst.tracking import _with_lock_retry, axis_metric_name, mirror_round, resolve_tracking_uri

KEY = {"point": "default", "arm": "rl", "seed": "0"}
METRICS = {"reward": 0.5, "accuracy": 0.25}


def _sqlite_uri(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / 'mlflow.db'}"


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return _sqlite_uri(tmp_path_factory.mktemp("results"))


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


def test_unreachable_server_returns_not_ok(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    status = mirror_round("http://127.0.0.1:9", "exp", KEY, {"a": 1}, METRICS, 0)
    assert status["ok"] is False and status["error"]
    json.dumps(status)


def test_concurrent_processes_on_a_fresh_db(tmp_path):
    """Concurrent first connects must not corrupt the new DB's schema migration."""
    uri = _sqlite_uri(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(Path(fst.__file__).parents[1])}
    code = (
        "import json, sys; from fst.tracking import mirror_round; "
        "print(json.dumps(mirror_round(sys.argv[1], 'exp', {'seed': sys.argv[2]}, {}, "
        "{'reward': 1.0}, 0)))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, uri, str(seed)], stdout=subprocess.PIPE, text=True, env=env
        )
        for seed in range(3)
    ]
    statuses = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(s["ok"] for s in statuses), statuses
    assert len(_runs(uri, "exp")) == 3


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
