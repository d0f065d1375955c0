"""Sampling with transformers: chat prompts, seeding, and log-probs the sampler really used."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from fst.generation import SamplingSettings, chat_prompt_ids, sample

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEMPERATURE = 0.7


@contextmanager
def eos_bias(model, eos_id: int, bias: float = 6.0):
    """Raise the eos logit so that the random tiny model stops within a few tokens sometimes."""

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        logits[..., eos_id] += bias
        return logits

    handle = model.lm_head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tokenizer = tiny
    texts = [
        ("Be brief.", "What is 2+2?"),
        ("", "A much longer question, with many more tokens in it than the first one has, right?"),
        ("You are a careful math tutor.", "Tom has 3 apples and buys 4 more. How many now?"),
    ]
    ids = [chat_prompt_ids(tokenizer, s, u) for s, u in texts]
    assert len({len(p) for p in ids}) == 3, "the batch must mix prompt lengths"
    return ids


def teacher_forced_logprobs(model, prompt, completion, temperature):
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    if temperature:
        logits = logits / temperature
    logp = logits.log_softmax(-1)[len(prompt) - 1 : len(prompt) - 1 + len(completion)]
    return logp.gather(-1, torch.tensor(completion)[:, None])[:, 0]


def test_chat_prompt_has_explicit_system_and_user_text(tiny):
    _, tokenizer = tiny
    ids = chat_prompt_ids(tokenizer, "Answer with one number.", "What is 6 times 7?")
    assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nAnswer with one number.<|im_end|>")
    assert "<|im_start|>user\nWhat is 6 times 7?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert "SmolLM" not in text


def test_empty_system_text_gives_no_default_system_prompt(tiny):
    _, tokenizer = tiny
    text = tokenizer.decode(chat_prompt_ids(tokenizer, "", "hi"))
    assert text.startswith("<|im_start|>system\n<|im_end|>")
    assert "SmolLM" not in text and "helpful" not in text
    assert text.count("<|im_start|>system") == 1


def test_sampling_is_deterministic_per_seed(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=6, temperature=TEMPERATURE, batch_size=8)
    first = sample(model, tokenizer, prompts, settings, seed=11)
    again = sample(model, tokenizer, prompts, settings, seed=11)
    other = sample(model, tokenizer, prompts, settings, seed=12)
    assert first == again
    assert [c.ids for c in first] != [c.ids for c in other]


def test_repeated_prompt_gives_different_samples(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=6, temperature=TEMPERATURE, batch_size=8)
    group = sample(model, tokenizer, [prompts[0]] * 4, settings, seed=0)
    assert len({tuple(c.ids) for c in group}) > 1


def test_batches_are_seeded_independently_of_what_follows(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=5, temperature=TEMPERATURE, batch_size=2)
    everything = sample(model, tokenizer, prompts + prompts, settings, seed=5)
    assert len(everything) == 6
    assert everything[:2] == sample(model, tokenizer, prompts[:2], settings, seed=5)


def test_logprobs_match_teacher_forcing_in_a_mixed_length_batch(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=8, temperature=TEMPERATURE, batch_size=16)
    batch = prompts * 3
    with eos_bias(model, tokenizer.eos_token_id):
        done = sample(model, tokenizer, batch, settings, seed=3)
        for prompt, completion in zip(batch, done, strict=True):
            assert len(completion.logprobs) == len(completion.ids) >= 1
            expected = teacher_forced_logprobs(model, prompt, completion.ids, TEMPERATURE)
            torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)
    assert {c.finish_reason for c in done} == {"stop", "length"}, "seed should give both endings"


def test_logprobs_without_eos_run_to_the_limit(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=6, temperature=TEMPERATURE, batch_size=8)
    for prompt, completion in zip(prompts, sample(model, tokenizer, prompts, settings, 1), strict=True):
        expected = teacher_forced_logprobs(model, prompt, completion.ids, TEMPERATURE)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)


def test_finish_reason_is_stop_iff_the_last_token_is_eos(tiny, prompts):
    model, tokenizer = tiny
    eos = tokenizer.eos_token_id
    settings = SamplingSettings(max_new_tokens=5, temperature=TEMPERATURE, batch_size=16)
    with eos_bias(model, eos):
        done = sample(model, tokenizer, prompts * 4, settings, seed=7)
    for completion in done:
        assert eos not in completion.ids[:-1], "nothing may follow the end token"
        if completion.finish_reason == "stop":
            assert completion.ids[-1] == eos
        else:
            assert completion.finish_reason == "length"
            assert completion.ids[-1] != eos
            assert len(completion.ids) == settings.max_new_tokens
        assert completion.text == tokenizer.decode(completion.ids, skip_special_tokens=True)
    assert {c.finish_reason for c in done} == {"stop", "length"}


def test_greedy_gives_the_argmax_tokens(tiny, prompts):
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=5, temperature=0.0, batch_size=8)
    done = sample(model, tokenizer, prompts, settings, seed=0)
    assert [c.ids for c in done] == [c.ids for c in sample(model, tokenizer, prompts, settings, 99)]
    for prompt, completion in zip(prompts, done, strict=True):
        ids = list(prompt)
        for _ in range(len(completion.ids)):
            with torch.inference_mode():
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tokenizer.eos_token_id:
                break
        assert completion.ids == ids[len(prompt) :]
        # greedy log-probs are those of the untempered distribution
        expected = teacher_forced_logprobs(model, prompt, completion.ids, 0.0)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)


def test_the_models_own_sampling_defaults_are_ignored(tiny, prompts):
    """A generation_config.json with top-k, nucleus, min-p or a repetition penalty must not change what we
    sample from: the trainer scores the full distribution at τ."""
    model, tokenizer = tiny
    settings = SamplingSettings(max_new_tokens=4, temperature=TEMPERATURE, batch_size=8)
    saved = model.generation_config
    hostile = saved.to_dict() | {"top_k": 5, "top_p": 0.5, "min_p": 0.3, "repetition_penalty": 2.0}
    model.generation_config = type(saved)(**hostile)
    try:
        done = sample(model, tokenizer, prompts, settings, 2)
    finally:
        model.generation_config = saved
    for prompt, completion in zip(prompts, done, strict=True):
        full = teacher_forced_logprobs(model, prompt, completion.ids, TEMPERATURE)
        torch.testing.assert_close(torch.tensor(completion.logprobs), full, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_real_model_logprobs_match_teacher_forcing(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    batch = [
        chat_prompt_ids(tokenizer, "Reply with one word.", "Say hello."),
        chat_prompt_ids(tokenizer, "", "Tom has 17 apples and buys 25 more. How many apples now?"),
    ]
    settings = SamplingSettings(max_new_tokens=10, temperature=TEMPERATURE, batch_size=8)
    done = sample(model, tokenizer, batch, settings, seed=0)
    for prompt, completion in zip(batch, done, strict=True):
        expected = teacher_forced_logprobs(model, prompt, completion.ids, TEMPERATURE)
        torch.testing.assert_close(torch.tensor(completion.logprobs), expected, atol=1e-4, rtol=0)
    assert done[0].finish_reason == "stop" and done[0].ids[-1] == tokenizer.eos_token_id
