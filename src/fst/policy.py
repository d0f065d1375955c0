"""Slow weights θ on disk: a full Hugging Face folder, or a LoRA adapter plus a reference to its base.

A policy folder written here loads as-is in transformers (and in vLLM, with the adapter as a
LoRARequest or merged). `fst_policy.json` records the kind, the base folder (relative, so results
can be moved) and the hash of the weights.
"""

from __future__ import annotations

import os
from pathlib import Path

from fst.artifacts import hash_path, read_json, write_json

POLICY_RECORD = "fst_policy.json"


def policy_kind(path: Path) -> str:
    return "lora" if (Path(path) / "adapter_config.json").is_file() else "full"


def base_model_of(path: Path) -> Path:
    """The full model folder a policy builds on (the folder itself for a full policy)."""
    path = Path(path)
    if policy_kind(path) == "full":
        return path
    return (path / read_json(path / POLICY_RECORD)["base_model"]).resolve()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_of(path))


def load_policy(path: Path, dtype: str = "float32", device: str = "cpu"):
    """Load a policy for inference on `device` (eval mode; a LoRA adapter merged into its base)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    model = AutoModelForCausalLM.from_pretrained(base_model_of(path), dtype=getattr(torch, dtype))
    if policy_kind(path) == "lora":
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, path).merge_and_unload()
    model.to(device).eval()
    return model, load_tokenizer(path)


def save_policy(model, out_dir: Path, base_model_dir: Path, state_dict: dict | None = None, **info) -> None:
    """Save a trained model (a PeftModel saves only its adapter) with its policy record.

    state_dict: the full weights when `model`'s own are sharded over processes (FSDP), gathered by
    the caller; else the model's own are saved.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, **({"state_dict": state_dict} if state_dict is not None else {}))
    kind = policy_kind(out_dir)
    if kind == "full":
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base_model_dir).save_pretrained(out_dir)
    record = {
        "kind": kind,
        "base_model": os.path.relpath(Path(base_model_dir).resolve(), out_dir.resolve()),
        "weights_sha256": hash_path(out_dir),
        **info,
    }
    write_json(record, out_dir / POLICY_RECORD)
