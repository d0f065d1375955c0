"""Shared fixtures: the real packaged SmolLM2 (converted once, cached) and a tiny random model.

The tiny model has SmolLM2's tokenizer and chat template but only two small layers, so stage tests
run the real code paths (chat template, generation, TRL, PEFT) in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("FST_TEST_CACHE", Path(__file__).parent / ".cache"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from fst.model import MODEL_RECORD, PACKAGED_SMOLLM2, prepare_base_model

    out = CACHE / "smollm2"
    if not (out / MODEL_RECORD).is_file():
        prepare_base_model(PACKAGED_SMOLLM2, out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = CACHE / "tiny-llama"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """The tiny model's matrices are too small for threads: on a busy 2-core machine they cost ~1000x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny model and its tokenizer, loaded once per test module."""
    from fst.policy import load_policy

    return load_policy(tiny_model_dir)
