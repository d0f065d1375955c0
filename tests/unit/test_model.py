"""The base model stage: the packaged GGUF becomes a loadable HF folder with the right end token."""

import json

import pytest

from fst.model import MODEL_RECORD


@pytest.mark.slow
def test_packaged_smollm2_has_chatml_end_token(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>") == 2
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    assert model.generation_config.eos_token_id == 2
    record = json.loads((smollm2_dir / MODEL_RECORD).read_text())
    assert record["parameters"] > 100_000_000
    assert len(record["weights_sha256"]) == 64


@pytest.mark.slow
def test_explicit_system_prompt_replaces_default(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert "SmolLM" not in text
    assert text.endswith("<|im_start|>assistant\n")
