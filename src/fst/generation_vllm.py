"""Policy sampling with an in-process vLLM engine (`rollout.backend: vllm`), pinned to vllm 0.31.

The same contract as fst.generation.sample: one completion per token-id prompt, sampled from the full
distribution softmax(logits / τ) (no top-k, nucleus, min-p or penalties, and not the model's own
generation_config.json), with the log-probability of each sampled token under that distribution.
vLLM's kernels and bf16 arithmetic make those log-probs differ slightly from the trainer's; the slow
stage corrects for it from the stored values (slow.importance_correction).

vLLM facts this relies on (its source, vllm/outputs.py, vllm/logprobs.py, vllm/sampling_params.py,
vllm/entrypoints/llm.py): `LLM.generate(prompts, sampling_params, lora_request=...)` takes a list of
{"prompt_token_ids": [...]} prompts with one SamplingParams each and returns one RequestOutput per
prompt, in input order; `RequestOutput.outputs[0]` is a CompletionOutput with `token_ids`,
`logprobs` (per position a {token_id: Logprob(logprob, rank, decoded_token)} that holds the sampled
token when logprobs=0) and `finish_reason` "stop" or "length"; the end-of-sequence token is in
`token_ids` when generation stopped on it; `logprobs_mode="processed_logprobs"` reports log-probs
after temperature scaling.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fst.device import release_gpu_memory
from fst.generation import Completion, SamplingSettings
from fst.policy import base_model_of, load_tokenizer, policy_kind

_LORA_ID = 1  # one adapter per engine: the stage's policy


@dataclass(frozen=True)
class VllmEngineSettings:
    gpu_memory_utilization: float
    max_model_len: int | None
    tensor_parallel_size: int
    enforce_eager: bool


def _vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            "rollout.backend is 'vllm' but vllm cannot be imported here; run the stage in the GPU "
            "environment (envs/gpu.yaml, vllm==0.31.0) or set rollout.backend: transformers"
        ) from err
    return vllm


def sampling_params(vllm, settings: SamplingSettings, seed: int):
    """Every choice explicit; the seed is per request, so a completion does not depend on batching."""
    return vllm.SamplingParams(
        n=1,
        temperature=settings.temperature,  # 0 = greedy
        top_p=1.0,
        top_k=0,
        min_p=0.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
        repetition_penalty=1.0,
        max_tokens=settings.max_new_tokens,
        logprobs=0,  # the sampled token's log-prob only
        seed=seed,
        ignore_eos=False,
        skip_special_tokens=True,
    )


def completions_from_outputs(outputs, eos_id: int, tokenizer) -> list[Completion]:
    """Our rows' view of vLLM's RequestOutputs (one completion each)."""
    completions = []
    for request in outputs:
        (out,) = request.outputs
        ids = list(out.token_ids)
        if out.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM request {request.request_id} ended with {out.finish_reason!r}")
        if out.logprobs is None or len(out.logprobs) != len(ids):
            raise RuntimeError(f"vLLM request {request.request_id} returned no log-prob per token")
        logprobs = [float(position[token].logprob) for token, position in zip(ids, out.logprobs, strict=True)]
        stopped = out.finish_reason == "stop"
        if stopped and (not ids or ids[-1] != eos_id):
            raise RuntimeError(
                f"vLLM request {request.request_id} stopped on {out.stop_reason!r}, not on the end token "
                f"{eos_id}: only the end token may end a completion"
            )
        completions.append(
            Completion(ids, logprobs, out.finish_reason, tokenizer.decode(ids, skip_special_tokens=True))
        )
    return completions


class VllmSampler:
    """An engine on one policy: `sample(prompts, settings, seed)` like fst.generation.sample."""

    def __init__(self, llm, tokenizer, lora_request, record: dict):
        self.llm, self.tokenizer, self.lora_request, self.record = llm, tokenizer, lora_request, record

    def sample(self, prompts: list[list[int]], settings: SamplingSettings, seed: int) -> list[Completion]:
        vllm = _vllm()
        requests = [{"prompt_token_ids": list(p)} for p in prompts]
        params = [sampling_params(vllm, settings, seed + i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=False)
        return completions_from_outputs(outputs, self.tokenizer.eos_token_id, self.tokenizer)

    def describe(self) -> dict:
        return self.record

    def close(self) -> None:
        """Give the engine's GPU memory back, before the stage loads other models (idempotent).

        LLM.shutdown() where vLLM has it (its engine core then stops at once), else the engine is
        dropped and collected; either way the CUDA cache is emptied.
        """
        if self.llm is None:
            return
        shutdown = getattr(self.llm, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.llm = None
        release_gpu_memory()


def open_vllm_sampler(policy_dir: Path, dtype: str, engine: VllmEngineSettings, max_lora_rank: int):
    """vllm.LLM on the policy: a LoRA adapter served on its base folder (no merge), a full policy as is."""
    vllm = _vllm()
    policy_dir = Path(policy_dir)
    lora = policy_kind(policy_dir) == "lora"
    model_dir = base_model_of(policy_dir)
    llm = vllm.LLM(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype=dtype,  # never "auto": vLLM would drop a float32 checkpoint to bf16
        enable_lora=lora,
        max_lora_rank=max_lora_rank,
        logprobs_mode="processed_logprobs",
        generation_config="vllm",  # not the model's generation_config.json defaults
        **asdict(engine),
    )
    request = None
    if lora:
        from vllm.lora.request import LoRARequest

        request = LoRARequest("policy", _LORA_ID, str(policy_dir))
    record = {
        "backend": "vllm",
        "vllm": vllm.__version__,
        "model": str(model_dir),
        "dtype": dtype,
        "lora": str(policy_dir) if lora else None,
        **asdict(engine),
    }
    return VllmSampler(llm, load_tokenizer(policy_dir), request, record)
