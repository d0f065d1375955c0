"""A stand-in for vllm 0.31 at its API edge (vLLM cannot run without a GPU), shared by the tests.

Its classes have the fields and constructor arguments of vLLM 0.31's own (vllm/outputs.py
RequestOutput and CompletionOutput, vllm/logprobs.py Logprob, vllm/lora/request.py LoRARequest);
its LLM.generate draws each completion with our transformers sampler on a tiny real model, seeded
with the request's own seed; LLM.shutdown is recorded. `install(monkeypatch)` puts it in sys.modules.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from pathlib import Path

from fst.generation import SamplingSettings, sample
from fst.policy import load_policy


@dataclass
class Logprob:  # vllm/logprobs.py
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # vllm/outputs.py
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    routed_experts: object = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: object = None
    kv_transfer_params: dict | None = None


class RequestOutput:  # vllm/outputs.py
    def __init__(
        self,
        request_id,
        prompt,
        prompt_token_ids,
        prompt_logprobs,
        outputs,
        finished,
        metrics=None,
        lora_request=None,
        encoder_prompt=None,
        encoder_prompt_token_ids=None,
        num_cached_tokens=None,
    ):
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished
        self.lora_request = lora_request


@dataclass
class LoRARequest:  # vllm/lora/request.py
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


class SamplingParams:  # vllm/sampling_params.py: keyword arguments, recorded
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class LLM:
    """vllm.LLM: records its arguments; generate() draws with a tiny transformers model."""

    instances: list = []

    def __init__(self, **kwargs):
        self.kwargs, self.calls, self.shut_down = kwargs, [], False
        # engines still running when this one starts (a stage should hold one at a time)
        self.open_beside = [other for other in LLM.instances if not other.shut_down]
        self.model, self.tokenizer = load_policy(Path(kwargs["model"]))
        LLM.instances.append(self)

    def shutdown(self):
        self.shut_down = True

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=True):
        assert not self.shut_down, "generate() on an engine that was shut down"
        self.calls.append((prompts, sampling_params, lora_request))
        outputs = []
        for n, (prompt, params) in enumerate(zip(prompts, sampling_params, strict=True)):
            p = params.kwargs
            settings = SamplingSettings(p["max_tokens"], p["temperature"], 1)
            (done,) = sample(self.model, self.tokenizer, [prompt["prompt_token_ids"]], settings, p["seed"])
            logprobs = [
                {t: Logprob(lp, 1, "x")} | {t + 1: Logprob(-50.0, 2, "y")}
                for t, lp in zip(done.ids, done.logprobs, strict=True)
            ]
            out = CompletionOutput(
                0, done.text, list(done.ids), sum(done.logprobs), logprobs, finish_reason=done.finish_reason
            )
            outputs.append(RequestOutput(str(n), None, prompt["prompt_token_ids"], None, [out], True))
        return outputs


def per_request_sample(model, tokenizer, prompts, settings: SamplingSettings, seed: int):
    """What the stand-in draws: transformers sampling, one request at a time, request i seeded seed + i."""
    one = SamplingSettings(settings.max_new_tokens, settings.temperature, 1)
    return [sample(model, tokenizer, [p], one, seed + i)[0] for i, p in enumerate(prompts)]


def install(monkeypatch):
    """Put the stand-in where `import vllm` finds it (undone with the monkeypatch)."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.31.0"
    vllm.LLM, vllm.SamplingParams = LLM, SamplingParams
    lora = types.ModuleType("vllm.lora")
    request = types.ModuleType("vllm.lora.request")
    request.LoRARequest = LoRARequest
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    LLM.instances = []
    return vllm
