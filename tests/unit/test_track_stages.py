"""The track and sync-tracking stages end to end: a server that is down, then backfill from the files."""

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow_server import MlflowServer

from fst import cli
from fst.artifacts import write_json

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
        history = client.get_metric_history(child.info.run_id, "arithmetic/prompt:seed/mean_at_2")
        assert sorted((m.step, m.value) for m in history) == pytest.approx([(0, 0.1), (1, 0.2)])
        assert parent.data.params["swept.slow.learning_rate"] == "0.001"
        assert [Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "report")] == [
            "report.md"
        ]

        again = _sync(results, tracked, report, server.uri, tmp_path / "sync2.json")
        assert again["ok"] and all(s["logged_metrics"] == 0 for s in again["backfilled"])
        assert len(client.get_metric_history(child.info.run_id, "arithmetic/prompt:seed/mean_at_2")) == 2
    finally:
        server.stop()
