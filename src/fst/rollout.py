"""Rollout stage: G completions per problem under the current policy, spread over the population."""

from __future__ import annotations

import logging
from functools import partial

import pandas as pd

from fst.generation import SamplingSettings, chat_prompt_ids, sample
from fst.population import Member, spread_over_group
from fst.tasks import Problem

log = logging.getLogger(__name__)


def generate_rollouts(
    model,
    tokenizer,
    problems: list[Problem],
    members: list[Member],
    group_size: int,
    settings: SamplingSettings,
    seed: int,
    round_index: int,
    backend: str,
    engine=None,
) -> pd.DataFrame:
    """One row per completion with everything the model saw and produced (DESIGN.md "rollouts").

    `engine(prompts, settings, seed)` samples them: transformers' `sample` on `model` unless another
    engine (vLLM's, fst.generation_vllm) is given.
    """
    plan = [
        (group, sample_index, problem, member)
        for group, problem in enumerate(problems)
        for sample_index, member in enumerate(spread_over_group(members, group_size))
    ]
    prompts = [chat_prompt_ids(tokenizer, m.text, p.question) for _, _, p, m in plan]
    log.info("round %d: %d problems × %d samples", round_index, len(problems), group_size)
    completions = (engine or partial(sample, model))(tokenizer, prompts, settings, seed)
    rows = [
        {
            "round": round_index,
            "problem_id": problem.id,
            "task": problem.task,
            "group_index": group,
            "sample_index": sample_index,
            "member_id": member.id,
            "system_text": member.text,
            "user_text": problem.question,
            "prompt_ids": prompt,
            "completion_text": done.text,
            "completion_ids": done.ids,
            "logprobs": done.logprobs,
            "finish_reason": done.finish_reason,
            "backend": backend,
            "seed": seed,
            "temperature": settings.temperature,
        }
        for (group, sample_index, problem, member), prompt, done in zip(
            plan, prompts, completions, strict=True
        )
    ]
    return pd.DataFrame(rows)
