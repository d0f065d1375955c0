"""The vLLM backend against a stand-in at the vLLM API edge (vLLM cannot run without a GPU).

The stand-in (tests/vllm_stand_in.py) has vLLM 0.31's output classes; its LLM.generate draws each
completion with our transformers sampler on a tiny real model, seeded with the request's own seed, so
the rows it yields can be compared with the transformers backend's for the same draws.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
from vllm_stand_in import (
    LLM,
    CompletionOutput,
    Logprob,
    LoRARequest,
    RequestOutput,
    install,
    per_request_sample,
)

from fst.generation import SamplingSettings
from fst.generation_vllm import VllmEngineSettings, completions_from_outputs, open_vllm_sampler
from fst.policy import load_policy, save_policy
from fst.population import Member
from fst.rollout import generate_rollouts
from fst.tasks.splits import make_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ENGINE = VllmEngineSettings(
    gpu_memory_utilization=0.5, max_model_len=None, tensor_parallel_size=1, enforce_eager=True
)
SETTINGS = SamplingSettings(max_new_tokens=5, temperature=0.7, batch_size=4)


@pytest.fixture
def fake_vllm(monkeypatch):
    return install(monkeypatch)


@pytest.fixture(scope="module")
def problems():
    return make_splits("arithmetic", 0, {"train": 3})["train"]


def test_sampling_choices_are_explicit_and_seeded_per_request(fake_vllm, tiny_model_dir):
    sampler = open_vllm_sampler(tiny_model_dir, "float32", ENGINE, max_lora_rank=8)
    (llm,) = LLM.instances
    assert llm.kwargs == {
        "model": str(tiny_model_dir),
        "tokenizer": str(tiny_model_dir),
        "dtype": "float32",
        "enable_lora": False,
        "max_lora_rank": 8,
        "logprobs_mode": "processed_logprobs",
        "generation_config": "vllm",
        "gpu_memory_utilization": 0.5,
        "max_model_len": None,
        "tensor_parallel_size": 1,
        "enforce_eager": True,
    }
    sampler.sample([[1, 2, 3], [4, 5]], SETTINGS, seed=100)
    prompts, params, lora = llm.calls[0]
    assert prompts == [{"prompt_token_ids": [1, 2, 3]}, {"prompt_token_ids": [4, 5]}] and lora is None
    assert [p.kwargs["seed"] for p in params] == [100, 101]
    assert params[0].kwargs | {"seed": None} == {
        "n": 1,
        "temperature": 0.7,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": 5,
        "logprobs": 0,
        "seed": None,
        "ignore_eos": False,
        "skip_special_tokens": True,
    }
    assert sampler.describe()["vllm"] == "0.31.0"


def test_a_lora_policy_is_served_on_its_base_with_a_lora_request(fake_vllm, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, _ = load_policy(tiny_model_dir)
    adapter = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"]))
    save_policy(adapter, tmp_path / "policy", tiny_model_dir)
    sampler = open_vllm_sampler(tmp_path / "policy", "bfloat16", ENGINE, max_lora_rank=4)
    (llm,) = LLM.instances
    assert llm.kwargs["model"] == str(Path(tiny_model_dir).resolve()) and llm.kwargs["enable_lora"]
    sampler.sample([[1, 2]], SETTINGS, seed=0)
    assert llm.calls[0][2] == LoRARequest("policy", 1, str(tmp_path / "policy"))


def test_rows_match_the_transformers_backend_for_the_same_draws(fake_vllm, tiny_model_dir, problems):
    """Same draws (each request's seed), same rows: only the backend column differs."""
    model, tokenizer = load_policy(tiny_model_dir)
    members = [Member("m", "Answer with the number.", None, 1.0, None, 0)]
    sampler = open_vllm_sampler(tiny_model_dir, "float32", ENGINE, max_lora_rank=8)
    engine = lambda _tok, prompts, settings, seed: sampler.sample(prompts, settings, seed)  # noqa: E731
    with_vllm = generate_rollouts(None, tokenizer, problems, members, 2, SETTINGS, 7, 0, "vllm", engine)

    per_request = partial(per_request_sample, model)
    reference = generate_rollouts(
        model, tokenizer, problems, members, 2, SETTINGS, 7, 0, "transformers", per_request
    )
    assert list(with_vllm.columns) == list(reference.columns)
    assert (with_vllm.dtypes == reference.dtypes).all()
    pd.testing.assert_frame_equal(with_vllm.drop(columns="backend"), reference.drop(columns="backend"))
    assert set(with_vllm["finish_reason"]) <= {"stop", "length"}


def _request(ids, finish, stop_reason=None, logprobs=True):
    lps = [{t: Logprob(-0.5)} for t in ids] if logprobs else None
    return RequestOutput(
        "r", None, [1], None, [CompletionOutput(0, "", ids, None, lps, None, finish, stop_reason)], True
    )


def test_conversion_keeps_the_end_token_and_refuses_what_it_cannot_trust(tiny_model_dir):
    _, tokenizer = load_policy(tiny_model_dir)
    eos = tokenizer.eos_token_id
    (stopped, cut) = completions_from_outputs(
        [_request([5, 6, eos], "stop"), _request([5, 6], "length")], eos, tokenizer
    )
    assert (stopped.ids, stopped.logprobs, stopped.finish_reason) == ([5, 6, eos], [-0.5] * 3, "stop")
    assert (cut.ids, cut.finish_reason) == ([5, 6], "length")
    with pytest.raises(RuntimeError, match="abort"):
        completions_from_outputs([_request([5], "abort")], eos, tokenizer)
    with pytest.raises(RuntimeError, match="not on the end token"):
        completions_from_outputs([_request([5, 6], "stop", stop_reason="###")], eos, tokenizer)
    with pytest.raises(RuntimeError, match="log-prob"):
        completions_from_outputs([_request([5, 6], "length", logprobs=False)], eos, tokenizer)


def test_without_vllm_the_message_names_the_key_and_the_fix(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(
        ImportError, match=r"rollout.backend is 'vllm'.*vllm==0.31.0.*rollout.backend: transformers"
    ):
        open_vllm_sampler(tiny_model_dir, "float32", ENGINE, max_lora_rank=8)
