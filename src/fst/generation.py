"""Policy sampling with transformers (CPU or the stage's GPU): the engine behind rollouts and evaluation.

Samples from the full distribution softmax(logits / τ) — no top-k, no nucleus, none of the model's own
generation defaults — because that is the distribution the slow stage's trainer scores (it recomputes
old log-probs at τ over the whole vocabulary). Returns token ids and the log-probabilities of the
sampled tokens under that distribution, which the slow stage checks against its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float  # 0 means greedy
    batch_size: int  # sequences generated together (speed and memory, not the distribution)


@dataclass(frozen=True)
class Completion:
    ids: list[int]  # generated tokens, ending with eos when finish_reason == "stop"
    logprobs: list[float]  # log-probability of each generated token under the sampling distribution
    finish_reason: str  # "stop" or "length"
    text: str


def chat_prompt_ids(tokenizer, system_text: str, user_text: str) -> list[int]:
    """Token ids of the chat-templated prompt with an explicit system message.

    Always explicit (an empty string for "no prompt"): SmolLM2's template would otherwise inject
    its own default system prompt and the fast weights would not be what the model saw.
    """
    messages = [
        {"role": "system", "content": system_text},
        {"role": "user", "content": user_text},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def _trim(ids: list[int], logprobs: list[float], eos_id: int) -> tuple[list[int], list[float], str]:
    if eos_id in ids:
        end = ids.index(eos_id) + 1
        return ids[:end], logprobs[:end], "stop"
    return ids, logprobs, "length"


def _generation_config(tokenizer, settings: SamplingSettings):
    """Every sampling choice explicit: a model's generation_config.json (top_k 50, top_p 0.9,
    repetition penalties, ...) would otherwise change the distribution without our knowing. A filter
    set to None would take the model's value, so each is set to the value that filters nothing."""
    from transformers import GenerationConfig

    greedy = settings.temperature == 0
    sampling = {} if greedy else {"temperature": settings.temperature}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=not greedy,
        top_k=0,
        top_p=1.0,
        min_p=0.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **sampling,
    )


def _generate_batch(model, tokenizer, prompts: list[list[int]], settings: SamplingSettings):
    import torch

    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            generation_config=_generation_config(tokenizer, settings),
        )
    new_tokens = out.sequences[:, width:]
    # out.scores are the processed logits the sampler drew from (temperature applied);
    # one step at a time, so no batch × steps × vocabulary copy is made.
    chosen = torch.stack(
        [
            step.float().log_softmax(-1).gather(-1, new_tokens[:, t : t + 1]).squeeze(-1)
            for t, step in enumerate(out.scores)
        ],
        dim=1,
    )
    return new_tokens.tolist(), chosen.tolist()


def sample(model, tokenizer, prompts: list[list[int]], settings: SamplingSettings, seed: int):
    """One completion per prompt (repeat a prompt to get several), in batches, seeded once per call."""
    import torch

    torch.manual_seed(seed)
    completions: list[Completion] = []
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(prompts), settings.batch_size):
        batch = prompts[start : start + settings.batch_size]
        ids, logprobs = _generate_batch(model, tokenizer, batch, settings)
        for row_ids, row_lp in zip(ids, logprobs, strict=True):
            kept, kept_lp, reason = _trim(row_ids, row_lp, tokenizer.eos_token_id)
            text = tokenizer.decode(kept, skip_special_tokens=True)
            completions.append(Completion(kept, kept_lp, reason, text))
            tokens += len(kept)
        elapsed = time.perf_counter() - started
        log.info(
            "generated %d/%d completions, %d tokens, %.1f tok/s",
            len(completions),
            len(prompts),
            tokens,
            tokens / max(elapsed, 1e-9),
        )
    return completions
