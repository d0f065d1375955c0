"""Artifacts (atomic writes, content hashes, provenance) and policy folders (full and LoRA)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from fst.artifacts import (
    Provenance,
    atomic_path,
    content_hash,
    hash_path,
    read_json,
    write_json,
    write_parquet,
)
from fst.policy import POLICY_RECORD, base_model_of, load_policy, policy_kind, save_policy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_leaves_nothing_when_the_block_raises(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_write_keeps_the_old_content_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2')
        raise RuntimeError("killed")
    assert read_json(target) == {"v": 1}
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "out.json"
    write_json({"v": 1}, target)
    write_json({"v": 2, "path": Path("a/b")}, target)
    assert read_json(target) == {"v": 2, "path": "a/b"}
    assert list(tmp_path.iterdir()) == [target]


def test_write_parquet_round_trip(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "ids": [[1, 2], [3]]})
    write_parquet(frame, tmp_path / "x" / "f.parquet")
    back = pd.read_parquet(tmp_path / "x" / "f.parquet")
    assert list(back["a"]) == [1, 2]
    assert [list(v) for v in back["ids"]] == [[1, 2], [3]]


# --- hashes -------------------------------------------------------------------------------------


def test_file_hash_changes_with_content(tmp_path):
    f = tmp_path / "f.txt"
    f.write_text("one")
    first = hash_path(f)
    assert first == hash_path(f) and len(first) == 64
    f.write_text("two")
    assert hash_path(f) != first


def test_folder_hash_covers_names_and_contents(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"aaa")
    (folder / "sub" / "b.bin").write_bytes(b"bbb")
    first = hash_path(folder)
    # records and hidden files (e.g. a stale temporary) do not count
    (folder / ".a.bin.tmp123").write_bytes(b"junk")
    (folder / "fst_model.json").write_text('{"weights_sha256": "x"}')
    assert hash_path(folder) == first
    (folder / "sub" / "b.bin").write_bytes(b"bbc")
    changed = hash_path(folder)
    assert changed != first
    (folder / "sub" / "b.bin").write_bytes(b"bbb")
    assert hash_path(folder) == first
    (folder / "sub" / "b.bin").rename(folder / "sub" / "c.bin")
    assert hash_path(folder) != first


@pytest.mark.parametrize("record", ["fst_model.json", "fst_policy.json"])
def test_content_hash_uses_the_cached_weights_hash(tmp_path, record):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    assert content_hash(folder) == hash_path(folder)
    (folder / record).write_text(json.dumps({"weights_sha256": "cafe" * 16}))
    assert content_hash(folder) == "cafe" * 16


def test_content_hash_without_a_cached_value_hashes(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "fst_model.json").write_text(json.dumps({"source": "x"}))
    assert content_hash(folder) == hash_path(folder)
    f = tmp_path / "data.parquet"
    f.write_bytes(b"rows")
    assert content_hash(f) == hash_path(f)


# --- provenance ---------------------------------------------------------------------------------


def test_provenance_records_inputs_outputs_counts_timings_versions(tmp_path):
    data = tmp_path / "data.parquet"
    data.write_bytes(b"rows")
    model = tmp_path / "model"
    model.mkdir()
    (model / "fst_model.json").write_text(json.dumps({"weights_sha256": "beef" * 16}))
    before = time.time()
    prov = Provenance(
        "rollout",
        {"data": data, "model": model, "optional": None, "gone": tmp_path / "missing"},
        {"group_size": 4},
        seed=9,
    )
    prov.count(rollouts=8, tokens=100)
    prov.count(rollouts=4)
    with prov.timed("generate"):
        time.sleep(0.01)
    out = tmp_path / "rollouts.parquet"
    out.write_bytes(b"out")
    prov.write(tmp_path / "prov" / "rollout.json", outputs={"rollouts": out})

    record = read_json(tmp_path / "prov" / "rollout.json")
    assert record["stage"] == "rollout" and record["seed"] == 9
    assert record["config"] == {"group_size": 4}
    assert record["inputs"] == {
        "data": {"path": str(data), "sha256": hash_path(data)},
        "model": {"path": str(model), "sha256": "beef" * 16},
    }
    assert record["outputs"] == {"rollouts": {"path": str(out), "sha256": hash_path(out)}}
    assert record["counts"] == {"rollouts": 12, "tokens": 100}
    assert record["timings_s"]["generate"] >= 0.01
    assert before <= record["started"] <= record["ended"] <= time.time()
    assert record["wall_s"] >= record["timings_s"]["generate"]
    for package in ("python", "torch", "transformers", "fst-workflow"):
        assert record["versions"][package]
    assert "git_commit" in record and record["host"]


def test_provenance_records_the_scheduler_job_and_visible_devices(monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    assert Provenance("score", {}, {}).record["job"] == {}
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert Provenance("rollout", {}, {}).record["job"] == {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0"}


def test_timed_records_even_when_the_block_raises():
    prov = Provenance("x", {}, {})
    with pytest.raises(KeyError), prov.timed("step"):
        raise KeyError
    assert "step" in prov.record["timings_s"]


def test_a_part_timed_twice_adds_up():
    """A stage that loads two models times "model_load" twice: the record holds both, not the last."""
    import time

    prov = Provenance("x", {}, {})
    for _ in range(2):
        with prov.timed("model_load"):
            time.sleep(0.05)
    assert prov.record["timings_s"]["model_load"] >= 0.1


# --- policy folders -----------------------------------------------------------------------------


@pytest.fixture
def base_dir(tiny_model_dir, tmp_path) -> Path:
    """A private copy of the tiny model, laid out like a results tree."""
    out = tmp_path / "exp" / "base_model"
    shutil.copytree(tiny_model_dir, out)
    return out


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def _logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor([[1, 504, 3529, 314, 28, 2]])).logits


def test_full_policy_round_trip(base_dir, tmp_path):
    model = _load(base_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    out = tmp_path / "exp" / "round0" / "policy"
    save_policy(model, out, base_dir, round=0, steps=4)
    assert policy_kind(out) == "full"
    assert base_model_of(out) == out
    record = read_json(out / POLICY_RECORD)
    assert record["kind"] == "full" and record["round"] == 0 and record["steps"] == 4
    assert not os.path.isabs(record["base_model"])
    assert (out / record["base_model"]).resolve() == base_dir.resolve()
    assert record["weights_sha256"] == hash_path(out) == content_hash(out)
    loaded, tokenizer = load_policy(out)
    assert not loaded.training
    torch.testing.assert_close(_logits(loaded), _logits(model))
    assert tokenizer.eos_token == "<|im_end|>"
    assert not torch.allclose(_logits(loaded), _logits(_load(base_dir)))


def test_lora_policy_round_trip(base_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base_logits = _logits(_load(base_dir))
    peft_model = get_peft_model(
        _load(base_dir), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    )
    # fresh adapters are a no-op (B = 0); perturb B to make a trained-looking adapter
    torch.testing.assert_close(_logits(peft_model), base_logits)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator))
    expected = _logits(peft_model.eval())
    assert not torch.allclose(expected, base_logits, atol=1e-4)

    out = tmp_path / "exp" / "round1" / "policy"
    save_policy(peft_model, out, base_dir, round=1)
    assert (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists(), "a LoRA policy stores only its adapter"
    assert policy_kind(out) == "lora"
    record = read_json(out / POLICY_RECORD)
    assert record["kind"] == "lora"
    assert record["base_model"] == os.path.join("..", "..", "base_model")
    assert base_model_of(out) == base_dir.resolve()
    assert record["weights_sha256"] == hash_path(out) == content_hash(out)

    loaded, tokenizer = load_policy(out)
    assert not isinstance(loaded, PeftModel), "load_policy merges the adapter"
    assert not loaded.training
    torch.testing.assert_close(_logits(loaded), expected, atol=1e-4, rtol=1e-4)
    assert tokenizer.eos_token_id == 2

    # the base reference is relative: the whole tree can move
    moved = tmp_path / "moved"
    shutil.move(tmp_path / "exp", moved)
    again, _ = load_policy(moved / "round1" / "policy")
    torch.testing.assert_close(_logits(again), expected, atol=1e-4, rtol=1e-4)
