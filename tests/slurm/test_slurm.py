"""`snakemake --profile slurm` against a real SLURM (bring one up with `scripts/local-slurm.sh up`).

What ran is read from SLURM's own records (`scontrol show job`: name, comment, state, GPUs, memory,
restarts) and from each stage's provenance record (the job id and CUDA_VISIBLE_DEVICES it saw), not
from Snakemake's output. Without a reachable SLURM these tests are skipped; the dry-run test of the
round groups needs none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from loopback import Endpoint
from tiny_experiment import tiny_config

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
SLURM_PROFILE = ["--profile", str(REPO / "slurm")]
GPU_RULES = {"fast", "rollout", "slow", "evaluate", "evaluate_test", "decompose"}
CPU_RULES = {"tasks", "base_model", "seed_population", "score", "track", "summary", "report", "sync_tracking"}
PROPOSAL = "Here is the new instruction:\n```\nAdd the numbers, then end with the final number.\n```"


def _slurm_unreachable() -> str | None:
    if not shutil.which("sbatch"):
        return "no SLURM client here (scripts/local-slurm.sh up brings up a one-node SLURM)"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if nodes.returncode != 0 or not {"idle", "mix", "alloc"} & set(nodes.stdout.split()):
        return f"no SLURM controller with a usable node: {(nodes.stderr or nodes.stdout).strip()}"
    return None


_UNREACHABLE = _slurm_unreachable()
needs_slurm = pytest.mark.skipif(_UNREACHABLE is not None, reason=str(_UNREACHABLE))


def slurm_config(model_dir: Path, **overrides) -> dict:
    """The tiny experiment as arm fst for one round, with a small GEPA budget."""
    fst = {
        "arms": ["fst"],
        "rounds": 1,
        "fast": {"budget": 4, "population_size": 2, "anchors": 4, "pareto_problems": 2},
        "reflection": {"max_tokens": 16},
    }
    return tiny_config(model_dir, **(fst | overrides))


def _env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CUDA_VISIBLE_DEVICES", None)  # only SLURM may set it for a job
    return env


def start(workdir: Path, config: dict, *args: str) -> subprocess.Popen:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    with open(workdir / "snakemake.log", "w") as log:
        return subprocess.Popen(
            [*SNAKEMAKE, *SLURM_PROFILE, *args, "--configfile", "config.yaml"],
            cwd=workdir,
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def finish(process: subprocess.Popen, workdir: Path, timeout: float) -> tuple[int, str]:
    """Wait for Snakemake; on a timeout kill it and its jobs, then fail (a hang is a failure)."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        run = run_id(workdir)
        if run:
            subprocess.run(["scancel", "--name", run], check=False)
        pytest.fail(f"snakemake still running after {timeout} s:\n{output(workdir)[-3000:]}")
    return process.returncode, output(workdir)


def output(workdir: Path) -> str:
    return (workdir / "snakemake.log").read_text()


def run_id(workdir: Path) -> str | None:
    found = re.search(r"SLURM run ID: (\S+)", output(workdir))
    return found.group(1) if found else None


# Every job record seen so far, by job id: slurmctld forgets a finished job after MinJobAge (300 s),
# so a run longer than that would lose its first jobs' records if read only at the end.
_SEEN: dict[str, dict[str, str]] = {}


def slurm_jobs(run: str) -> list[dict[str, str]]:
    """SLURM's record of every job of one Snakemake run (job name = the run id), latest state of each."""
    lines = subprocess.run(
        ["scontrol", "-o", "show", "job"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for job in (dict(re.findall(r"(\w+)=(\S*)", line)) for line in lines):
        if "JobId" in job:
            _SEEN[job["JobId"]] = job
    return [job for job in _SEEN.values() if job.get("JobName") == run]


def keep_job_records(workdir: Path, process: subprocess.Popen) -> threading.Thread:
    """Read SLURM's job records every few seconds while Snakemake runs (see _SEEN)."""

    def poll():
        while process.poll() is None:
            run = run_id(workdir)
            if run:
                slurm_jobs(run)
            time.sleep(5)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    return watcher


def job_state(job_id: str) -> str:
    record = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
    return re.search(r"JobState=(\S+)", record).group(1)


def rule_of(job: dict[str, str]) -> str:
    """The rule from the comment the executor plugin gives each job: rule_<name>[_wildcards_...]."""
    return re.match(r"rule_(.+?)(?:_wildcards_|$)", job["Comment"]).group(1)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


@needs_slurm
@pytest.mark.slow
def test_tiny_experiment_runs_through_slurm_and_a_preempted_stage_resumes(tmp_path, tiny_model_dir):
    """Every rule is a SLURM job; GPU rules ask for and see a GPU; a preempted GEPA round resumes.

    The reflection LM is a loopback endpoint whose first reply is held back: while the fast stage
    waits for it (its GEPA state saved, the round half done), the job is requeued as a preemption
    would, and its second run must resume that state instead of starting the round over.
    """
    from gepa.core.state import GEPAState

    released = threading.Event()
    server = Endpoint(reply=lambda n: (released.wait(120), PROPOSAL)[1])
    reflection = {"backend": "openai", "base_url": server.base_url, "model": "loopback", "api_key_env": None}
    config = slurm_config(tiny_model_dir, reflection={"max_tokens": 16, **reflection})
    run_dir = tmp_path / "results/tiny/default/fst/seed0"
    started = time.time()
    process = start(tmp_path, config)
    keep_job_records(tmp_path, process)
    try:
        wait_for(lambda: server.requests or process.poll() is not None, 480, "the first reflection call")
        assert process.poll() is None, output(tmp_path)[-3000:]
        (fast_job,) = [j for j in slurm_jobs(run_id(tmp_path)) if rule_of(j) == "fast"]
        assert fast_job["JobState"] == "RUNNING"
        spent_before = GEPAState.load(str(run_dir / "gepa_state/round0")).total_num_evals
        # Preemption: SLURM kills the job and queues it again. It holds a requeued job back for two
        # minutes; once the job is pending again, let it start at once.
        subprocess.run(["scontrol", "requeue", fast_job["JobId"]], check=True)
        wait_for(lambda: job_state(fast_job["JobId"]) == "PENDING", 60, "the requeued job to pend")
        subprocess.run(["scontrol", "update", f"JobId={fast_job['JobId']}", "StartTime=now"], check=True)
        released.set()
        code, out = finish(process, tmp_path, timeout=600)
    finally:
        released.set()
        server.close()
    wall = time.time() - started
    assert code == 0, out[-4000:]

    jobs = slurm_jobs(run_id(tmp_path))
    by_rule: dict[str, list[dict]] = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    assert set(by_rule) == GPU_RULES | CPU_RULES, sorted(by_rule)
    assert len(jobs) == 18  # 3 task families, 2 evaluations and trackings, one of every other rule
    assert {job["JobState"] for job in jobs} == {"COMPLETED"}
    for job in jobs:
        asks_gpu = "gpu" in job.get("TresPerJob", "")
        assert asks_gpu == (rule_of(job) in GPU_RULES), job

    # What each stage saw, from its provenance record.
    job_ids = {rule: {job["JobId"] for job in rule_jobs} for rule, rule_jobs in by_rule.items()}
    results = tmp_path / "results/tiny"
    seen = {
        "base_model": results / "provenance/base_model.json",
        "tasks": results / "provenance/data_arithmetic.json",
        "seed_population": results / "default/provenance/population_seed.json",
        "fast": run_dir / "round0/provenance/fast.json",
        "rollout": run_dir / "round0/provenance/rollout.json",
        "score": run_dir / "round0/provenance/score.json",
        "slow": run_dir / "round0/provenance/slow.json",
        "evaluate": run_dir / "eval/after1/provenance.json",
        "decompose": run_dir / "eval/provenance/decomposition.json",
        "evaluate_test": run_dir / "eval/provenance/test.json",
    }
    for rule, path in seen.items():
        job = json.loads(path.read_text())["job"]
        assert job["SLURM_JOB_ID"] in job_ids[rule], (rule, job)
        assert ("CUDA_VISIBLE_DEVICES" in job) == (rule in GPU_RULES), (rule, job)

    # The preempted fast stage: SLURM restarted it once, and its second run resumed GEPA's state.
    assert fast_job["JobId"] in job_ids["fast"] and len(job_ids["fast"]) == 1
    (fast_record,) = by_rule["fast"]
    assert fast_record["Restarts"] == "1"
    assert "resuming this round's GEPA state" in (run_dir / "round0/logs/fast.log").read_text()
    stats = json.loads((run_dir / "round0/fast_report.json").read_text())["stats"]
    gepa_rollouts = pd.read_parquet(run_dir / "round0/gepa_rollouts.parquet")
    assert spent_before >= stats["rescoring_calls"] > 0
    # Every metric call is in the file, the preempted run's too: the calls of its unsaved last
    # iteration are marked as not counted by GEPA (which repeated them), and all are charged.
    assert len(gepa_rollouts) == stats["metric_calls"]
    assert gepa_rollouts["call_index"].tolist() == list(range(len(gepa_rollouts)))
    assert stats["metric_calls"] == stats["gepa_metric_calls"] + stats["uncounted_calls"]
    assert stats["gepa_metric_calls"] >= spent_before
    assert len(server.requests) >= 2  # the held-back call and at least one after the restart
    print(f"tiny experiment via SLURM (1 round, arm fst, one preemption): {wall:.0f} s")


@needs_slurm
def test_a_failing_job_is_retried_with_more_memory_then_fails_the_run(tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{ not json")
    config = slurm_config(broken)
    started = time.time()
    code, out = finish(start(tmp_path, config, "results/tiny/base_model"), tmp_path, timeout=300)
    assert code != 0
    assert "Error in rule base_model" in out and "results/tiny/logs/base_model.log" in out
    attempts = sorted(slurm_jobs(run_id(tmp_path)), key=lambda job: int(job["JobId"]))
    assert [rule_of(job) for job in attempts] == ["base_model", "base_model"]  # retried once
    assert [job["JobState"] for job in attempts] == ["FAILED", "FAILED"]
    assert [job["MinMemoryNode"] for job in attempts] == ["4000M", "8000M"]  # grows with the attempt
    assert [job["TimeLimit"] for job in attempts] == ["00:30:00", "01:00:00"]
    print(f"failing job reported after {time.time() - started:.0f} s")


@needs_slurm
def test_a_request_the_cluster_cannot_satisfy_fails_at_submission(tmp_path, tiny_model_dir):
    config = slurm_config(tiny_model_dir)
    started = time.time()
    target = "results/tiny/data/arithmetic.parquet"
    process = start(tmp_path, config, target, "--set-resources", "tasks:gpu=64")
    code, out = finish(process, tmp_path, timeout=120)
    assert code != 0
    assert "sbatch failed" in out and "Requested node configuration is not available" in out
    assert "--gpus=64" in out  # the message shows the request that was refused
    # SLURM refused both attempts at submission: recorded as failed, never queued or run.
    refused = slurm_jobs(run_id(tmp_path))
    assert len(refused) == 2
    assert {(job["JobState"], job["Reason"], job["RunTime"]) for job in refused} == {
        ("FAILED", "BadConstraints", "00:00:00")
    }
    assert time.time() - started < 60


def test_round_groups_put_each_rounds_stages_in_one_job(tmp_path, tiny_model_dir):
    config = slurm_config(tiny_model_dir, arms=["fst", "rl"], rounds=2)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [*SNAKEMAKE, *SLURM_PROFILE, "--profile", str(REPO / "slurm/rounds"), "--configfile", "config.yaml"]
        + ["--dry-run"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    groups: list[tuple[str, list[str]]] = []
    for line in (result.stdout + result.stderr).splitlines():
        if header := re.match(r"\[.*\] Group job (\S+) ", line):
            groups.append((header.group(1), []))
        elif member := re.match(r" {4}Job \d+: (.*)", line):
            groups[-1][1].append(member.group(1))
    stages = ["fast weights (GEPA)", "rollouts", "rewards and feedback", "slow weights (CISPO)"]
    assert sorted((name, sorted(members)) for name, members in groups) == sorted(
        (f"default/{arm}/seed0/round{r}", sorted(f"{arm} seed 0 round {r}: {stage}" for stage in stages))
        for arm in ("fst", "rl")
        for r in (0, 1)
    )
