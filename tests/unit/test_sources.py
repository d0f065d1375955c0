"""Reading a published dataset's source (local file, folder or cached hub snapshot), and refusing a bad
source before any job: a missing column names the file, the column and the fix; a hub dataset that
cannot be reached names the dataset and the fix. Nothing here touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub.constants
import pandas as pd
import pytest

from fst.config import ConfigError, validate_config
from fst.tasks import sources

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datasets"
POLARIS_COLUMNS = ("problem", "answer")
ROWS = [
    {"problem": "What is 1/2 + 1/4?", "answer": "\\frac{3}{4}", "difficulty": "7/8"},
    {"problem": "Solve x + 1 = 3.", "answer": "2", "difficulty": "8/8"},
]


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and an endpoint on a closed local port: no request leaves the machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf-cache"


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _spec(**keys) -> dict:
    return {"path": None, "hub": None, "revision": None, "files": None} | keys


def _config(**polaris) -> dict:
    return {"tasks": {"train": "polaris", "ood": []}, "datasets": {"polaris": polaris}}


def test_the_same_rows_from_jsonl_a_json_array_and_parquet(tmp_path):
    _jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    pd.DataFrame(ROWS).to_parquet(tmp_path / "c.parquet")
    for name in ("a.jsonl", "b.json", "c.parquet"):
        rows, record = sources.load_rows("polaris", _spec(path=str(tmp_path / name)), POLARIS_COLUMNS)
        assert [row for _, row in rows] == ROWS, name
        assert record.rows == 2 and record.revision is None and record.files == [name]
        assert rows[1][0].startswith(str(tmp_path / name)) and rows[1][0].endswith("2")  # line/row/item 2


def test_a_folder_reads_its_data_files_in_name_order_and_the_hash_follows_the_contents(tmp_path):
    folder = tmp_path / "snapshot"
    (folder / "data").mkdir(parents=True)
    _jsonl(folder / "data/train-2.jsonl", ROWS[1:])
    _jsonl(folder / "data/train-1.jsonl", ROWS[:1])
    (folder / "README.md").write_text("not data")
    rows, record = sources.load_rows("polaris", _spec(path=str(folder)), POLARIS_COLUMNS)
    assert [row for _, row in rows] == ROWS
    assert record.files == ["data/train-1.jsonl", "data/train-2.jsonl"]
    only_first = sources.load_rows("polaris", _spec(path=str(folder), files="*-1.jsonl"), POLARIS_COLUMNS)
    assert only_first[1].files == ["data/train-1.jsonl"]
    by_folder = sources.load_rows("polaris", _spec(path=str(folder), files="data/train-2.*"), POLARIS_COLUMNS)
    assert by_folder[1].files == ["data/train-2.jsonl"]  # matched on the path below the root, as the hub does
    with pytest.raises(FileNotFoundError, match="no data files matching 'train/\\*'"):
        sources.load_rows("polaris", _spec(path=str(folder), files="train/*"), POLARIS_COLUMNS)
    before = record.sha256
    _jsonl(folder / "data/train-2.jsonl", [ROWS[1] | {"answer": "3"}])
    assert sources.load_rows("polaris", _spec(path=str(folder)), POLARIS_COLUMNS)[1].sha256 != before


def test_a_row_missing_a_column_names_the_file_the_row_and_the_column(tmp_path):
    data = _jsonl(tmp_path / "polaris.jsonl", [ROWS[0], {"problem": "no answer here"}])
    with pytest.raises(ValueError, match=r"polaris\.jsonl line 2: column 'answer' is missing"):
        sources.load_rows("polaris", _spec(path=str(data)), POLARIS_COLUMNS)


def test_a_cached_hub_snapshot_is_read_offline_with_its_commit(no_hub, monkeypatch):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = no_hub / "datasets--POLARIS-Project--Polaris-Dataset-53K"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    _jsonl(snapshot / "p.jsonl", ROWS)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = _spec(hub="POLARIS-Project/Polaris-Dataset-53K")
    rows, record = sources.load_rows("polaris", spec, POLARIS_COLUMNS)
    assert [row for _, row in rows] == ROWS
    assert (record.origin, record.revision, record.files) == (
        "hf://datasets/POLARIS-Project/Polaris-Dataset-53K", commit, ["p.jsonl"])


# --- before any job: the config is refused ----------------------------------------------------------


def test_a_dataset_file_missing_a_column_is_refused_by_the_config(tmp_path):
    data = _jsonl(tmp_path / "polaris.jsonl", [{"question": "1+1?", "answer": "2"}])
    with pytest.raises(ConfigError) as error:
        validate_config(_config(path=str(data)), source="mine.yaml")
    message = str(error.value)
    assert "mine.yaml: datasets.polaris" in message and str(data) in message
    assert "column 'problem' is missing" in message and "docs/paper-tasks.md" in message


def test_a_parquet_file_missing_a_column_is_refused(tmp_path):
    data = tmp_path / "polaris.parquet"
    pd.DataFrame([{"problem": "1+1?", "solution": "2"}]).to_parquet(data)
    with pytest.raises(ConfigError, match=r"column 'answer' is missing"):
        validate_config(_config(path=str(data)))


def test_a_dataset_family_without_a_source_is_refused():
    with pytest.raises(ConfigError, match=r"tasks.train is 'polaris', a published dataset, but datasets"):
        validate_config(_config())
    with pytest.raises(ConfigError, match=r"tasks.ood is 'physics'"):
        validate_config({"tasks": {"ood": ["physics"]}})


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"datasets.polaris.path '.*nowhere.jsonl' does not exist"):
        validate_config(_config(path=str(tmp_path / "nowhere.jsonl")))


def test_a_hub_dataset_without_network_is_refused_with_the_dataset_name_and_the_fix(tmp_path, no_hub):
    config = _config(hub="POLARIS-Project/Polaris-Dataset-53K")
    with pytest.raises(ConfigError) as error:
        validate_config(config, source="paper.yaml")
    message = str(error.value)
    assert "paper.yaml: datasets.polaris.hub: the dataset 'POLARIS-Project/Polaris-Dataset-53K'" in message
    assert "cannot be read" in message
    assert "could not be reached" in message
    assert "hf download POLARIS-Project/Polaris-Dataset-53K --repo-type dataset" in message
    assert "datasets.polaris.path" in message


def test_a_hub_dataset_in_offline_mode_is_refused_without_trying_the_network(tmp_path, no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE is set and the dataset is not in the local"):
        validate_config(_config(hub="POLARIS-Project/Polaris-Dataset-53K"))


def test_a_first_row_the_family_cannot_read_is_refused_before_any_job(tmp_path):
    broken = tmp_path / "polaris.jsonl"
    broken.write_text('{"problem": "1+1?", "answer": \n')
    with pytest.raises(ConfigError, match=r"datasets.polaris: .*polaris.jsonl line 1: invalid JSON"):
        validate_config(_config(path=str(broken)))
    hover = FIXTURES / "hover.jsonl"  # rows without an `evidence` column, and no evidence file given
    with pytest.raises(ConfigError, match=r"datasets.hover: .*hover.jsonl line 1: no evidence text"):
        validate_config({"tasks": {"train": "hover"}, "datasets": {"hover": {"path": str(hover)}}})


def test_a_dataset_named_by_plasticity_or_continual_needs_a_source():
    with pytest.raises(ConfigError, match=r"continual.schedule\[1\] is 'physics', a published dataset"):
        validate_config({"kinds": ["continual"], "continual": {"schedule": ["arithmetic", "physics"]}})
    with pytest.raises(ConfigError, match=r"plasticity.task is 'polaris', a published dataset"):
        validate_config({"arms": ["rl"], "kinds": ["main", "plasticity"], "plasticity": {"task": "polaris"}})


def test_a_job_rereading_the_workflow_on_a_node_does_not_read_the_sources(tmp_path, no_hub):
    from fst.kinds.tasks import source_checks

    config = _config(hub="POLARIS-Project/Polaris-Dataset-53K")
    with source_checks(False):  # as common.smk does outside Snakemake's main process
        assert validate_config(config)["datasets"]["polaris"]["hub"] == "POLARIS-Project/Polaris-Dataset-53K"
    with pytest.raises(ConfigError, match="cannot be read"):
        validate_config(config)
