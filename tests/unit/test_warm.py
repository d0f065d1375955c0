"""The warm stage runner: a stage forked from it equals the same stage run in its own process, with the
job's exit status, streams and signals; a client it cannot serve runs the stage itself."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from fst import artifacts, warm
from fst.data import build_task_data
from fst.population import save_population, seed_population

CLIENT = [sys.executable, "-c", "from fst.warm import main; main()"]  # what the `fst` command runs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("warm") / "warm.log"
    path = warm.start(str(log), idle_s=300)
    assert path and Path(path).exists()
    yield path, log
    warm.stop(path)
    deadline = time.monotonic() + 10
    while Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(path).exists()  # stopped, its socket removed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    artifacts.write_parquet(build_task_data("arithmetic", 0, {"train": 8, "val": 2, "test": 2}, None),
                            root / "data.parquet")
    save_population(seed_population("You are a careful math tutor."), root / "population.json", 0)
    return root


def _rollout(tiny_model_dir, inputs, out: Path, max_new_tokens=6, problems=4) -> list[str]:
    settings = {"max_new_tokens": max_new_tokens, "temperature": 0.7, "batch_size": 8, "device": "cpu",
                "dtype": "float32", "backend": "transformers", "vllm": {}, "max_lora_rank": 16,
                "group_size": 2, "problems": problems}
    return ["rollout", "--policy", str(tiny_model_dir), "--population", str(inputs / "population.json"),
            "--data", str(inputs / "data.parquet"), "--round", "0", "--seed", "1",
            "--settings", json.dumps(settings), "--out", str(out / "rollouts.parquet"),
            "--provenance", str(out / "provenance.json")]


def _env(**changes) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.update(changes)
    return env


def test_a_stage_forked_by_the_runner_equals_the_stage_in_its_own_process(server, inputs, tiny_model_dir,
                                                                          tmp_path):
    path, log = server
    own, warm_ = tmp_path / "own", tmp_path / "warm"
    alone = subprocess.run(CLIENT + _rollout(tiny_model_dir, inputs, own), env=_env(FST_WARM_RUNNER="off"),
                           capture_output=True, text=True)
    forked = subprocess.run(CLIENT + _rollout(tiny_model_dir, inputs, warm_), env=_env(FST_WARM_RUNNER=path),
                            capture_output=True, text=True)
    assert alone.returncode == forked.returncode == 0, forked.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(own / "rollouts.parquet"),
                                  pd.read_parquet(warm_ / "rollouts.parquet"))
    assert "fst rollout" in forked.stderr  # the stage's log lines reach the job's own stderr
    provenance = {name: artifacts.read_json(folder / "provenance.json")
                  for name, folder in (("own", own), ("warm", warm_))}
    assert provenance["warm"]["warm_runner"] and not provenance["own"]["warm_runner"]
    assert provenance["warm"]["timings_s"]["process_start"] < provenance["own"]["timings_s"]["process_start"]
    assert "job" in log.read_text()


def test_exit_status_and_errors_reach_the_job(server, tmp_path):
    path, _ = server
    usage = subprocess.run(CLIENT + ["rollout", "--policy", "x"], env=_env(FST_WARM_RUNNER=path),
                           capture_output=True, text=True)
    assert usage.returncode == 2 and "required" in usage.stderr  # argparse's own status and message
    missing = subprocess.run(CLIENT + ["score", "--rollouts", str(tmp_path / "none.parquet"), "--data", "x",
                                       "--out", str(tmp_path / "o"), "--provenance", str(tmp_path / "p")],
                             env=_env(FST_WARM_RUNNER=path), capture_output=True, text=True)
    assert missing.returncode == 1 and "Traceback" in missing.stderr and "none.parquet" in missing.stderr


def test_a_client_of_another_import_path_runs_the_stage_itself(server, inputs, tiny_model_dir, tmp_path):
    path, _ = server
    src = str(Path(__file__).parents[2] / "src")
    other = subprocess.run(CLIENT + _rollout(tiny_model_dir, inputs, tmp_path),
                           env=_env(FST_WARM_RUNNER=path, PYTHONPATH=src), capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert not artifacts.read_json(tmp_path / "provenance.json")["warm_runner"]


def test_a_killed_job_stops_its_forked_stage(server, inputs, tiny_model_dir, tmp_path):
    path, log = server
    before = len(log.read_text())
    long_rollout = _rollout(tiny_model_dir, inputs, tmp_path, max_new_tokens=400, problems=8)
    job = subprocess.Popen(CLIENT + long_rollout, env=_env(FST_WARM_RUNNER=path), stderr=subprocess.PIPE,
                           text=True)
    deadline = time.monotonic() + 60
    child = None
    while child is None and time.monotonic() < deadline:
        found = re.findall(r"job (\d+): fst rollout", log.read_text()[before:])
        child = int(found[0]) if found else time.sleep(0.1)
    assert child is not None
    job.send_signal(signal.SIGTERM)
    job.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(child)
    assert job.returncode != 0 and not (tmp_path / "rollouts.parquet").exists()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_client_gone_before_its_answer_does_not_end_the_runner(server, inputs, tiny_model_dir, tmp_path):
    """A job killed while its request is in flight: the runner ends that stage and serves the next job."""
    import socket

    path, _ = server
    body = json.dumps({"argv": _rollout(tiny_model_dir, inputs, tmp_path / "gone"), "cwd": os.getcwd(),
                       "env": _env(), "streams": [], "identity": warm._identity()}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        socket.send_fds(client, [warm._HEADER.pack(len(body))], [])
        client.sendall(body)  # and gone, without reading the answer
    after = subprocess.run(CLIENT + _rollout(tiny_model_dir, inputs, tmp_path / "next"),
                           env=_env(FST_WARM_RUNNER=path), capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
    assert artifacts.read_json(tmp_path / "next" / "provenance.json")["warm_runner"]
