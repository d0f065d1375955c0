"""The whole workflow through Snakemake on a tiny config: DAG shape, bad config, a full run, kill + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_experiment import tiny_config

from fst.report.figures import TITLES as REPORT_FIGURES

REPO = Path(__file__).resolve().parents[2]
CODEIO_FIXTURE = REPO / "tests" / "fixtures" / "datasets" / "codeio.jsonl"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]


def snakemake(workdir: Path, config: dict, *args: str) -> subprocess.CompletedProcess:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [*SNAKEMAKE, "--configfile", "config.yaml", *args]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)


def test_dry_run_lists_rounds_times_seeds(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir, seeds=[0, 1, 2], rounds=3)
    result = snakemake(tmp_path, config, "-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    counts = dict(line.split()[:2] for line in result.stdout.splitlines() if len(line.split()) == 2)
    assert counts["slow"] == "9"  # 3 seeds x 3 rounds
    assert counts["evaluate"] == "12"  # 3 seeds x (3 rounds + the starting point)
    assert counts["evaluate_test"] == "3"  # the held-out test split once per run, after all rounds
    assert counts["base_model"] == "1"


def test_a_gepa_round_is_handed_the_previous_gepa_round_folder(tmp_path, tiny_model_dir):
    """Arm gepa's round r continues round r-1's search (same weights); arm fst with GEPA every 2nd
    round has no GEPA round just before one, so each of its GEPA rounds starts afresh."""
    fast = {"every": 2, "anchors": 4, "pareto_problems": 2}
    config = tiny_config(tiny_model_dir, arms=["fst", "gepa"], rounds=3, fast=fast)
    result = snakemake(tmp_path, config, "-n", "-p")
    assert result.returncode == 0, result.stderr
    handed = {}
    for line in (result.stdout + result.stderr).splitlines():
        if "fst fast --arm" in line:
            words = line[line.index("fst fast") :].split()
            arm, r = words[words.index("--arm") + 1], int(words[words.index("--round") + 1])
            flag = "--previous-gepa-dir"
            handed[arm, r] = words[words.index(flag) + 1] if flag in words else None
    run = "results/tiny/default/{}/seed0/gepa_state/round{}"
    assert handed == {
        ("gepa", 0): None, ("gepa", 1): run.format("gepa", 0), ("gepa", 2): run.format("gepa", 1),
        ("fst", 0): None, ("fst", 1): None, ("fst", 2): None,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rounds": "three"}, "rounds"),
        ({"slow": {"batch_sze": 4}}, "slow.batch_sze"),
        ({"slow": {"batch_size": 3}}, "rollout.group_size"),
        ({"tasks": {"data_file": "missing.jsonl"}}, "missing.jsonl"),
        ({"sweep": {"slow.lr": [0.1, 0.2]}}, "sweep key 'slow.lr' is not a config key"),
        ({"sweep": {"slow.learning_rate": []}}, "empty list"),
        (  # a CodeI/O file given as Polaris math: its first row lacks the column "problem"
            {"tasks": {"train": "polaris"}, "datasets": {"polaris": {"path": str(CODEIO_FIXTURE)}}},
            "codeio.jsonl line 1: column 'problem' is missing",
        ),
    ],
)
def test_bad_config_is_rejected_before_any_job(tmp_path, tiny_model_dir, change, message):
    result = snakemake(tmp_path, tiny_config(tiny_model_dir, **change), "-n")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert "config.yaml" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists()


def _round0_files(workdir: Path) -> dict[Path, int]:
    round0 = workdir / "results/tiny/default/rl/seed0/round0"
    return {p: p.stat().st_mtime_ns for p in round0.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_run_killed_mid_round_resumes_without_redoing_finished_rounds(tmp_path, tiny_model_dir):
    config = tiny_config(tiny_model_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        [*SNAKEMAKE, "--configfile", "config.yaml"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    in_round1 = tmp_path / "results/tiny/default/rl/seed0/round1/logs/rollout.log"
    deadline = time.time() + 600
    while not in_round1.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert in_round1.exists(), "the run never reached round 1"
    os.killpg(process.pid, signal.SIGKILL)  # a crash or preemption: no clean-up at all
    process.wait()

    finished = _round0_files(tmp_path)
    assert any(p.name == "fst_policy.json" for p in finished)
    assert not (tmp_path / "results/tiny/default/rl/seed0/round1/slow_metrics.json").exists()

    assert snakemake(tmp_path, config, "--unlock").returncode == 0
    result = snakemake(tmp_path, config, "--rerun-incomplete")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _round0_files(tmp_path) == finished  # nothing of round 0 redone or lost
    assert "round: 0" not in result.stderr.replace("round=0", "round: 0")

    summary = pd.read_parquet(tmp_path / "results/tiny/summary.parquet")
    assert sorted(summary["after_rounds"].unique()) == [0, 1, 2]
    assert sorted(summary["rl_steps"].unique()) == [0, 2, 4]
    report = tmp_path / "results/tiny/report"
    assert "## Sample efficiency" in (report / "report.md").read_text()
    assert all((report / f"figures/{name}.png").stat().st_size > 0 for name in REPORT_FIGURES)
    _assert_mirrored_to_mlflow(tmp_path, rounds=2)


def _assert_mirrored_to_mlflow(workdir: Path, rounds: int) -> None:
    from mlflow import MlflowClient

    for k in range(rounds + 1):
        status = yaml.safe_load(
            (workdir / f"results/tiny/default/rl/seed0/eval/after{k}/tracked.json").read_text()
        )
        assert status["ok"], status
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'results/mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`fst.arm` = 'rl'")
    history = client.get_metric_history(run.info.run_id, "arithmetic/mean_at_1")
    assert sorted(m.step for m in history) == list(range(rounds + 1))
    assert run.data.params["slow.steps_per_round"] == "2"


def test_malformed_data_row_is_reported_with_its_line(tmp_path, tiny_model_dir):
    rows = ['{"question": "1+1?", "answer": "2"}', '{"question": "2+2?"}']
    (tmp_path / "mine.jsonl").write_text("\n".join(rows) + "\n")
    config = tiny_config(tiny_model_dir, tasks={"data_file": "mine.jsonl"})
    result = snakemake(tmp_path, config, "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "line 2" in output and "answer" in output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_fst_and_gepa_arms_run_gepa_rounds_with_lineage_and_accounting(tmp_path, tiny_model_dir):
    config = tiny_config(
        tiny_model_dir,
        arms=["fst", "rl", "gepa"],
        rounds=1,
        fast={"budget": 6, "population_size": 2, "anchors": 4, "pareto_problems": 2},
        reflection={"max_tokens": 16},
        report={"post_hoc_gepa": True},
    )
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results/tiny/default"
    for arm in ("fst", "gepa"):
        report = json.loads((run / f"{arm}/seed0/round0/fast_report.json").read_text())
        assert report["stats"]["gepa_round"]
        # re-scoring Φ_0 (1 member x 2 Pareto problems) + the proposal budget, never more than GEPA's cap
        assert report["stats"]["rescoring_calls"] == 2
        assert 2 < report["stats"]["metric_calls"] <= report["stats"]["max_metric_calls"] + 3
        assert report["reflection_usage"]["calls"] >= 1
        gepa_rollouts = pd.read_parquet(run / f"{arm}/seed0/round0/gepa_rollouts.parquet")
        assert len(gepa_rollouts) == report["stats"]["metric_calls"]
    assert not (run / "gepa/seed0/round0/rollouts.parquet").exists()  # arm gepa trains no weights
    # profiles/default/ runs every model stage on one torch thread, whatever --cores: numbers that do
    # not depend on the machine's cores, and two model jobs at once on two cores
    runtimes = [json.loads(path.read_text()).get("runtime") for path in run.rglob("*.json")
                if "provenance" in path.parts or path.name == "provenance.json"]
    threads = [runtime["cpu_threads"] for runtime in runtimes if runtime]
    assert len(threads) >= 10 and set(threads) == {1}
    summary = pd.read_parquet(tmp_path / "results/tiny/summary.parquet")
    after = summary[summary["after_rounds"] == 1].groupby("arm").first()
    assert after.loc["gepa", "rl_steps"] == 0 and after.loc["fst", "rl_steps"] == 2
    fst_calls = json.loads((run / "fst/seed0/round0/fast_report.json").read_text())["stats"]["metric_calls"]
    assert after.loc["fst", "policy_rollouts"] == fst_calls + 8  # GEPA calls + the round's RL rollouts
    _assert_reward_figure_matches_raw_files(tmp_path / "results/tiny", run)
    cells = pd.read_parquet(run / "fst/seed0/eval/decomposition.parquet")
    assert sorted(zip(cells["weights"], cells["prompt"], strict=True)) == [
        ("base", "evolved"), ("base", "seed"), ("trained", "evolved"), ("trained", "seed")]
    # One sampling seed per run: the same weights and prompt give the same number at every point.
    start = {arm: pd.read_parquet(run / f"{arm}/seed0/eval/after0/eval.parquet").set_index("metric")
             for arm in ("fst", "rl", "gepa")}
    assert len({frame.loc["mean@1", "value"] for frame in start.values()}) == 1
    base_seed = cells[(cells["weights"] == "base") & (cells["prompt"] == "seed")].iloc[0]
    assert base_seed["value"] == start["fst"].loc["mean@1", "value"]
    assert start["gepa"].loc["kl_to_base", "value"] == 0.0
    for arm in ("fst", "rl", "gepa"):
        test = pd.read_parquet(run / f"{arm}/seed0/eval/test.parquet").set_index("selection")
        assert set(test.index) == {"final", "selected"} and test.loc["final", "after_rounds"] == 1
    assert set(summary.loc[summary["split"] == "test", "arm"]) == {"fst", "rl", "gepa"}
    text = (tmp_path / "results/tiny/report/report.md").read_text()
    assert "## Held-out test split" in text and "## Noise" in text
    posthoc_report = json.loads((run / "rl/seed0/round1/fast_report.json").read_text())
    posthoc_calls = posthoc_report["stats"]["metric_calls"]
    assert posthoc_calls > 0  # GEPA ran on rl's final checkpoint
    (posthoc,) = pd.read_parquet(tmp_path / "results/tiny/report/tables/posthoc.parquet").to_dict("records")
    assert posthoc["rl→gepa_rollouts"] == posthoc["rl_rollouts"] + posthoc_calls


def _assert_reward_figure_matches_raw_files(experiment: Path, runs: Path) -> None:
    """The reward-vs-policy-rollouts figure, redrawn from the summary, against a count from raw files."""
    from fst.report import analysis, figures
    from fst.report import build as report

    summary, _ = analysis.with_validation_metric(pd.read_parquet(experiment / "summary.parquet"))
    tables = report.analyse(summary, pd.DataFrame(), min_fit_points=5)
    fig = figures.reward_curves(summary, tables["curves"], tables["sample_efficiency"], "policy_rollouts",
                                experiment / "check.png")
    plotted = {line.get_label(): line for line in fig.axes[0].lines}
    for arm in ("fst", "gepa"):
        raw_x, raw_y = [0], []
        for k in (0, 1):
            samples = pd.read_parquet(runs / f"{arm}/seed0/eval/after{k}/samples.parquet")
            raw_y.append(samples[samples["setting"].str.startswith("prompt:")]["reward"].mean())
        round0 = runs / f"{arm}/seed0/round0"
        trained = len(pd.read_parquet(round0 / "rollouts.parquet")) if arm == "fst" else 0
        raw_x.append(trained + len(pd.read_parquet(round0 / "gepa_rollouts.parquet")))
        assert list(plotted[arm].get_xdata()) == raw_x
        assert list(plotted[arm].get_ydata()) == pytest.approx(raw_y)


@pytest.mark.slow
def test_sweep_grid_runs_every_point_with_an_mlflow_parent_each(tmp_path, tiny_model_dir):
    sweep = {"slow.learning_rate": [0.001, 0.002], "rollout.temperature": [0.7, 1.0]}
    result = snakemake(tmp_path, tiny_config(tiny_model_dir, rounds=1, sweep=sweep))
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "results/tiny"
    seeds = experiment.glob("*/*/population_seed.json")
    points = sorted(str(p.parent.relative_to(experiment)) for p in seeds)
    # one folder per swept key, in the config's key order (the test's YAML writer sorts keys)
    assert points == [f"rollout.temperature~{t}/slow.learning_rate~{lr}"
                      for t in ("0.7", "1.0") for lr in ("0.001", "0.002")]
    trained = json.loads((experiment / points[3] / "rl/seed0/round0/provenance/slow.json").read_text())
    assert trained["config"]["learning_rate"] == 0.002
    summary = pd.read_parquet(experiment / "summary.parquet")
    assert sorted(summary["point"].unique()) == points
    curves = pd.read_parquet(experiment / "report/tables/curves.parquet")
    assert len(curves) == 4 * 2  # 4 points x 2 evaluation points, arm rl

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    parents = {r.info.run_id: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.info.run_name for r in parents.values()) == points
    assert len(children) == 4
    for child in children:
        parent = parents[child.data.tags["mlflow.parentRunId"]]
        assert child.data.tags["fst.point"] == parent.info.run_name
        assert child.data.params["slow.learning_rate"] == parent.data.params["swept.slow.learning_rate"]
    assert all(client.list_artifacts(run_id, "report") for run_id in parents)


@pytest.mark.slow
def test_plasticity_trains_plain_rl_on_the_new_task_from_the_base_and_each_phase_a_checkpoint(
    tmp_path, tiny_model_dir
):
    config = tiny_config(tiny_model_dir, rounds=1, kinds=["plasticity"],
                         plasticity={"task": "claims", "rounds": 1})
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results/tiny/default"
    # phase B starts from the phase-A run's final weights (the base model for the control), with the
    # seed prompt and a fresh optimizer, and trains on the phase-B task
    from_rl = json.loads((run / "plasticity-from-rl/seed0/round0/provenance/rollout.json").read_text())
    assert from_rl["inputs"]["policy"]["path"].endswith("rl/seed0/round0/policy")
    assert from_rl["inputs"]["data"]["path"].endswith("data/claims.parquet")
    from_base = json.loads((run / "plasticity-from-base/seed0/round0/provenance/slow.json").read_text())
    from_rl_slow = json.loads((run / "plasticity-from-rl/seed0/round0/provenance/slow.json").read_text())
    assert from_base["inputs"]["policy_in"]["path"].endswith("base_model")
    population = json.loads((run / "plasticity-from-rl/seed0/round0/population.json").read_text())
    seed_prompt = json.loads((run / "population_seed.json").read_text())
    assert [m["text"] for m in population["members"]] == [m["text"] for m in seed_prompt["members"]]
    # a fresh optimizer: phase B's first round starts at step 0 (phase A's state would resume at step 2)
    metrics = json.loads((run / "plasticity-from-rl/seed0/round0/slow_metrics.json").read_text())
    assert metrics["global_step"] == 2
    # its KL reference is its starting weights, phase A's checkpoint (the control's is the base model)
    assert from_rl_slow["inputs"]["kl_reference"]["path"].endswith("rl/seed0/round0/policy")
    assert "kl_reference" not in from_base["inputs"]
    evaluation = pd.read_parquet(run / "plasticity-from-rl/seed0/eval/after1/eval.parquet")
    assert set(evaluation.loc[evaluation["metric"] == "mean@1", "task"]) == {"claims"}
    table = pd.read_parquet(tmp_path / "results/tiny/report/tables/plasticity.parquet").set_index("init")
    assert set(table.index) == {"base", "rl"}
    assert table.loc["base", "verdict"] == "control"
    # the table's final accuracy is the run's own evaluation
    mean = evaluation.set_index("metric").loc["mean@1", "value"]
    assert table.loc["rl", "final"] == pytest.approx(mean)
    text = (tmp_path / "results/tiny/report/report.md").read_text()
    assert "## Plasticity (phase B: plain RL on claims" in text
    assert (tmp_path / "results/tiny/report/figures/plasticity_phase_b_curves.png").stat().st_size > 0


@pytest.mark.slow
def test_continual_runs_switch_task_and_evaluate_every_task_every_round(tmp_path, tiny_model_dir):
    config = tiny_config(
        tiny_model_dir,
        arms=["rl", "gepa"],
        kinds=["continual"],
        continual={"schedule": ["arithmetic", "claims"], "rounds_per_stage": 1},
        prompts={"seed": "Answer the question."},
        fast={"budget": 4, "population_size": 2, "anchors": 2, "pareto_problems": 2},
        reflection={"max_tokens": 16},
    )
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "results/tiny/default"
    assert not (run / "rl").exists()  # kind continual alone: no main runs
    for round_index, task in enumerate(["arithmetic", "claims"]):
        rounds = run / f"continual-rl/seed0/round{round_index}"
        rollout = json.loads((rounds / "provenance/rollout.json").read_text())
        assert rollout["inputs"]["data"]["path"].endswith(f"data/{task}.parquet")
    # the weights carry over the switch: round 1 trains round 0's output
    slow = json.loads((run / "continual-rl/seed0/round1/provenance/slow.json").read_text())
    assert slow["inputs"]["policy_in"]["path"].endswith("continual-rl/seed0/round0/policy")
    # GEPA follows the current task: the claims round starts a fresh search, from the carried population
    fast = json.loads((run / "continual-gepa/seed0/round1/provenance/fast.json").read_text())
    assert fast["gepa"]["continued_from"] is None
    gepa_calls = pd.read_parquet(run / "continual-gepa/seed0/round1/gepa_rollouts.parquet")
    assert gepa_calls["problem_id"].str.startswith("claims-").all()
    for k in range(3):
        evaluation = pd.read_parquet(run / f"continual-rl/seed0/eval/after{k}/eval.parquet")
        assert set(evaluation.loc[evaluation["metric"] == "mean@1", "task"]) == {"arithmetic", "claims"}
    stages = pd.read_parquet(tmp_path / "results/tiny/report/tables/continual_stages.parquet")
    assert sorted(zip(stages["stage"], stages["task"], stages["arm"], strict=True)) == [
        (0, "arithmetic", "gepa"), (0, "arithmetic", "rl"), (1, "claims", "gepa"), (1, "claims", "rl")]
    # normalised to the best peak of the stage: NaN with a note where no arm rose above 0
    best = stages.groupby("stage")["peak"].transform("max")
    scored = best > 0
    assert (stages.loc[scored, "normalised_peak"] == stages.loc[scored, "peak"] / best[scored]).all()
    assert stages.loc[~scored, "normalised_peak"].isna().all()
    assert stages.loc[~scored, "note"].str.len().gt(0).all()
    text = (tmp_path / "results/tiny/report/report.md").read_text()
    assert "## Continual learning" in text and "## Sample efficiency" not in text
    summary = pd.read_parquet(tmp_path / "results/tiny/summary_continual.parquet")
    assert set(summary["arm"]) == {"continual-rl", "continual-gepa"}

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results/mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.info.run_name for r in runs} >= {"continual-rl-seed0", "continual-gepa-seed0"}


@pytest.mark.slow
def test_a_proposer_sweep_runs_each_fast_arm_beside_its_blind_twin(tmp_path, tiny_model_dir):
    config = tiny_config(
        tiny_model_dir,
        arms=["gepa"],
        rounds=1,
        sweep={"fast.proposer": ["reflective", "blind"]},
        fast={"budget": 4, "population_size": 2, "anchors": 2, "pareto_problems": 2},
        reflection={"max_tokens": 16},
    )
    result = snakemake(tmp_path, config)
    assert result.returncode == 0, result.stderr[-3000:]
    experiment = tmp_path / "results/tiny"
    for proposer in ("reflective", "blind"):
        stats = json.loads(
            (experiment / f"fast.proposer~{proposer}/gepa/seed0/round0/fast_report.json").read_text()
        )["stats"]
        assert stats["proposer"] == proposer
        assert (stats["task_description"] is not None) == (proposer == "blind")
    table = pd.read_parquet(experiment / "report/tables/proposers.parquet")
    assert sorted(zip(table["arm"], table["after_rounds"], strict=True)) == [("gepa", 0), ("gepa", 1)]
    start = table.set_index("after_rounds").loc[0]
    assert start["difference"] == 0.0  # before any GEPA round both twins are the seed prompt, same draws
    text = (experiment / "report/report.md").read_text()
    assert "## Does the feedback matter?" in text
    assert (experiment / "report/figures/reflective_vs_blind.png").stat().st_size > 0
