"""The paper-scale configs under config/experiments/: they validate, refuse to start without their data,
and their dry runs list the DAG a hand count expects. The sources are swapped for our fixture files in
each dataset's layout (nothing here reaches the hub)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pandas as pd
import pytest
import yaml

from fst.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "datasets"
LOCAL_SOURCES = {
    "paper-math.yaml": {"polaris": {"hub": None, "path": str(FIXTURES / "polaris.jsonl")}},
    "paper-codeio.yaml": {"codeio": {"hub": None, "path": str(FIXTURES / "codeio.jsonl")}},
    "paper-hover.yaml": {
        "hover": {"path": str(FIXTURES / "hover.jsonl"), "evidence": str(FIXTURES / "hover_evidence.jsonl")}
    },
}


def _layered(name: str, datasets: dict | None) -> dict:
    from fst.config import merged

    config = yaml.safe_load((REPO / "config" / "experiments" / name).read_text())
    return merged(config, {"datasets": datasets}) if datasets else config


def test_every_shipped_experiment_config_validates():
    shipped = sorted((REPO / "config" / "experiments").glob("*.yaml"))
    assert {path.name for path in shipped} >= set(LOCAL_SOURCES)
    for path in shipped:
        validate_config(_layered(path.name, LOCAL_SOURCES.get(path.name)), source=path.name)


@pytest.mark.parametrize("name", ["paper-math.yaml", "paper-codeio.yaml"])
def test_a_paper_config_without_the_hub_is_refused_naming_its_dataset(name, monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (family,) = LOCAL_SOURCES[name]
    hub = _layered(name, None)["datasets"][family]["hub"]
    with pytest.raises(ConfigError, match=rf"{name}: datasets.{family}.hub: the dataset '{hub}' cannot be"):
        validate_config(_layered(name, None), source=name)


def test_the_hover_config_without_its_downloaded_files_is_refused_naming_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # data/hover/ does not exist here
    with pytest.raises(ConfigError, match=r"datasets.hover.path 'data/hover/hover_train_release_v1.1.json'"):
        validate_config(_layered("paper-hover.yaml", None), source="paper-hover.yaml")


@pytest.mark.parametrize("name", sorted(LOCAL_SOURCES))
def test_a_paper_config_dry_runs_to_the_expected_dag(name, tmp_path):
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"datasets": LOCAL_SOURCES[name]}))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "--quiet", "rules"]
    command += ["--workflow-profile", str(REPO / "profiles" / "paper")]  # the resources of this scale
    command += ["--configfile", str(REPO / "config" / "experiments" / name), "sources.yaml"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [words for words in map(str.split, result.stdout.splitlines()) if len(words) == 2]
    counts = {rule: int(count) for rule, count in rows if count.isdigit()}
    # By hand: arms fst, rl, gepa; 50 rounds; one seed; one task (tasks.ood is empty).
    assert counts == {
        "base_model": 1, "seed_population": 1, "tasks": 1,
        "fast": 150,  # every arm, every round (arm rl's passes its fixed prompt through)
        "rollout": 100, "score": 100, "slow": 100,  # the two arms that train weights, every round
        "evaluate": 153, "track": 153,  # every arm after 0..50 rounds
        "evaluate_test": 3, "decompose": 1,  # once per run; arm fst's channel decomposition
        "summary": 1, "report": 1, "sync_tracking": 1, "all": 1,
        "total": 767,
    }  # fmt: skip


def test_the_data_job_reads_each_source_into_splits_with_the_source_in_provenance(tmp_path, tiny_model_dir):
    from tiny_experiment import tiny_config

    from fst.tasks.sources import content_hash

    config = tiny_config(
        tiny_model_dir,
        tasks={
            "train": "polaris",
            "ood": ["codeio", "hover", "physics"],
            "sizes": {"train": 4, "val": 1, "test": 1},
        },
        datasets={
            "polaris": {"path": str(FIXTURES / "polaris.jsonl")},
            "codeio": {"path": str(FIXTURES / "codeio.jsonl")},
            "hover": LOCAL_SOURCES["paper-hover.yaml"]["hover"],
            "physics": {"path": str(FIXTURES / "physics.jsonl"), "rel_tol": 0.02},
        },
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    families = ("polaris", "codeio", "hover", "physics")
    targets = [f"results/tiny/data/{family}.parquet" for family in families]
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "1"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([*command, *targets, "--configfile", "config.yaml"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for family in families:
        frame = pd.read_parquet(tmp_path / f"results/tiny/data/{family}.parquet")
        assert frame["split"].value_counts().to_dict() == {"train": 4, "val": 1, "test": 1}, family
        assert set(frame["task"]) == {family} and frame["id"].is_unique
        record = json.loads((tmp_path / f"results/tiny/provenance/data_{family}.json").read_text())
        source = record["source"]
        path = Path(config["datasets"][family]["path"])
        assert (source["dataset"], source["origin"], source["revision"]) == (family, str(path), None)
        assert source["files"] == [path.name] and source["sha256"] == content_hash(path.parent, [path])
        assert source["rows"] == sum(1 for line in path.read_text().splitlines() if line.strip())
        assert record["config"]["source"]["path"] == str(path) and record["seed"] == 0
        made = {"codeio": 7, "polaris": 6, "hover": 6, "physics": 6}[family]  # codeio: a row without cases
        assert record["counts"]["source_rows"] == source["rows"] and record["counts"]["problems_made"] == made
    hover = json.loads((tmp_path / "results/tiny/provenance/data_hover.json").read_text())
    evidence = FIXTURES / "hover_evidence.jsonl"
    digest = hashlib.sha256(evidence.read_bytes()).hexdigest()
    assert hover["inputs"]["evidence"] == {"path": str(evidence), "sha256": digest}  # the evidence, hashed
    physics = pd.read_parquet(tmp_path / "results/tiny/data/physics.parquet")
    assert {json.loads(meta)["rel_tol"] for meta in physics["meta"]} == {0.02}  # the config's, per problem
