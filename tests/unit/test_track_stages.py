"""The track and sync-tracking stages end to end: a server that is down, then backfill from the files."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer

import fst.tracking
from fst import cli
from fst.artifacts import write_json
from fst.tracking import point_metrics, point_payload, sync_points

POINT = "slow.learning_rate~0.001"
OUTAGE_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def _run_files(run: Path, k: int) -> dict:
    """The files one evaluation point's track stage reads, as the workflow lays them out."""
    after = run / f"eval/after{k}"
    after.mkdir(parents=True)
    pd.DataFrame(
        {
            "after_rounds": [k, k],
            "task": ["arithmetic", "claims"],
            "setting": ["prompt:seed", "none"],
            "metric": ["mean@2", "greedy_accuracy"],
            "value": [0.1 * (k + 1), 0.5],
            "n": [32, 16],
        }
    ).to_parquet(after / "eval.parquet")
    write_json({"round": k, "members": []}, after / "population.json")
    provenance = []
    for r in range(k):
        for stage, counts in [
            ("fast", {"metric_calls": 10}),
            ("rollout", {"rollouts": 32}),
            ("slow", {"rl_steps": 4, "optimizer_steps": 3}),
        ]:
            path = run / f"round{r}/provenance/{stage}.json"
            write_json({"counts": counts}, path)
            provenance.append(str(path))
    return {
        "eval": after / "eval.parquet",
        "population": after / "population.json",
        "provenance": provenance,
        "out": after / "tracked.json",
    }


def _track(results: Path, files: dict, k: int, uri: str) -> dict:
    params = json.dumps(
        {"swept": {"slow.learning_rate": 0.001}, "config": {"slow": {"learning_rate": 0.001}}}
    )
    cli.main(
        [
            "track",
            "--eval",
            str(files["eval"]),
            "--population",
            str(files["population"]),
            "--round-provenance",
            *files["provenance"],
            "--results-dir",
            str(results),
            "--experiment",
            "outage",
            "--point",
            POINT,
            "--arm",
            "fst",
            "--seed",
            "0",
            "--after-rounds",
            str(k),
            "--params",
            params,
            "--uri",
            uri,
            "--out",
            str(files["out"]),
        ]
    )
    return json.loads(files["out"].read_text())


def _sync(results: Path, tracked: list[Path], report: Path, uri: str, out: Path) -> dict:
    cli.main(
        [
            "sync-tracking",
            "--tracked",
            *map(str, tracked),
            "--files",
            str(report),
            "--results-dir",
            str(results),
            "--experiment",
            "outage",
            "--uri",
            uri,
            "--out",
            str(out),
        ]
    )
    return json.loads(out.read_text())


def test_track_survives_a_dead_server_and_sync_backfills_from_the_files(tmp_path, monkeypatch):
    for name, value in OUTAGE_ENV.items():
        monkeypatch.setenv(name, value)
    results = tmp_path / "results"
    run = results / f"outage/{POINT}/fst/seed0"
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")  # its port is chosen, nothing listens there yet
    files = [_run_files(run, k) for k in (0, 1)]
    statuses = [_track(results, f, k, server.uri) for k, f in enumerate(files)]
    assert [s["ok"] for s in statuses] == [False, False]  # the stage itself succeeded
    assert statuses[1]["payload"]["extra_steps"] == {"rl_steps": 4, "rollouts": 42}

    report = tmp_path / "report.md"
    report.write_text("# report\n")
    server.start()
    try:
        tracked = [f["out"] for f in files]
        sync = _sync(results, tracked, report, server.uri, tmp_path / "sync.json")
        assert sync["ok"] and len(sync["backfilled"]) == 2 and not sync["pending"]
        client = MlflowClient(server.uri)
        runs = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("fst.role") == "point"]
        (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        history = client.get_metric_history(child.info.run_id, "arithmetic/mean_at_2")
        assert sorted((m.step, m.value) for m in history) == pytest.approx([(0, 0.1), (1, 0.2)])
        assert parent.data.params["swept.slow.learning_rate"] == "0.001"
        assert [Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")] == [
            "report.md"
        ]

        again = _sync(results, tracked, report, server.uri, tmp_path / "sync2.json")
        assert again["ok"] and all(s["logged_metrics"] == 0 for s in again["backfilled"])
        assert len(client.get_metric_history(child.info.run_id, "arithmetic/mean_at_2")) == 2
    finally:
        server.stop()


def _record(point: str, step: int, ok: bool, uri: str) -> dict:
    """A tracked.json: the track stage's status beside the payload it sent."""
    payload = {
        "experiment": "e",
        "run_key": {"point": point, "arm": "fst", "seed": "0"},
        "parent_key": {"point": point},
        "metrics": {},
        "step": step,
    }
    return {"ok": ok, "uri": uri, "payload": payload}


def test_sync_skips_sent_points_and_stops_at_the_first_failure(monkeypatch):
    sent, attached = [], []

    def mirror(uri, **payload):
        sent.append((payload["parent_key"]["point"], payload["step"]))
        return {"ok": payload["step"] != 1, "error": "down"}

    def attach(uri, experiment, key, files, artifact_dir):
        attached.append((key["point"], [f.name for f in files], artifact_dir))
        return {"ok": True}

    monkeypatch.setattr(fst.tracking, "mirror_round", mirror)
    monkeypatch.setattr(fst.tracking, "attach_files", attach)
    tracked = [
        ("a0", _record("a", 0, True, "u")),
        ("a1", _record("a", 1, False, "u")),
        ("b0", _record("b", 0, True, "elsewhere")),
        ("b1", _record("b", 1, False, "u")),
    ]
    report = sync_points("u", "e", tracked, ["report.md"], "report")
    assert sent == [("a", 1)]  # a0 is in this store already; b0 and b1 wait for the server
    assert not report["ok"] and report["pending"] == ["b0", "b1"] and not attached
    assert report["failed"] == [{"tracked": "a1", "ok": False, "error": "down"}]

    tracked[1] = ("a1", _record("a", 1, True, "u"))
    sent.clear()
    monkeypatch.setattr(
        fst.tracking, "mirror_round", lambda uri, **payload: sent.append(payload) or {"ok": True}
    )
    report = sync_points("u", "e", tracked, ["report.md"], "report")
    assert report["ok"] and [s["tracked"] for s in report["backfilled"]] == ["b0", "b1"]
    assert attached == [("a", ["report.md"], "report"), ("b", ["report.md"], "report")]


def test_a_point_payload_carries_the_test_split_and_the_slow_metrics():
    evaluation = pd.DataFrame(
        {
            "task": ["arithmetic"],
            "setting": ["prompt:m1"],
            "metric": ["mean@2"],
            "value": [0.5],
            "ci95_low": [0.25],
            "ci95_high": [0.75],
        }
    )
    test = evaluation.assign(selection="final", after_rounds=2)
    metrics = point_metrics(evaluation, test, {"loss": 0.5, "steps": [1]})
    assert metrics == {
        "arithmetic/mean@2": 0.5,
        "arithmetic/mean@2/ci95_low": 0.25,
        "arithmetic/mean@2/ci95_high": 0.75,
        "test/final/arithmetic/mean@2": 0.5,
        "test/final/arithmetic/mean@2/ci95_low": 0.25,
        "test/final/arithmetic/mean@2/ci95_high": 0.75,
        "test/final/after_rounds": 2.0,
        "train/loss": 0.5,
    }
    payload = point_payload(
        experiment="e",
        point=POINT,
        arm="fst",
        seed=0,
        after_rounds=2,
        point_params={"swept": {"lr": 1}, "config": {"slow": {"lr": 1}}},
        metrics={},
        rl_steps=4,
        rollouts=8,
        files=[Path("eval.parquet")],
    )
    assert payload["run_key"] == {"point": POINT, "arm": "fst", "seed": "0"}
    assert payload["params"] == {"slow.lr": "1"}
    assert payload["parent_params"] == {"swept.lr": "1", "slow.lr": "1"}
    assert payload["extra_steps"] == {"rl_steps": 4, "rollouts": 8}
    assert payload["artifacts"] == ["eval.parquet"]
