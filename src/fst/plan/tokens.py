"""Token estimates without a tokenizer (the plan loads no model): prompts, questions, reflection requests,
and the tokens of each throughput stage."""

from __future__ import annotations

import math
import random
from pathlib import Path

# the sizes the estimates assume
CHARS_PER_TOKEN = 4  # SmolLM2: the schema's 93-character seed prompt is 21 tokens
CHAT_TEMPLATE_TOKENS = 16  # system and user turns and the generation prompt (SmolLM2's template: 14)
UNKNOWN_QUESTION_TOKENS = 256  # a task whose questions the plan cannot read (a published dataset)
FEEDBACK_TOKENS = 40  # one rollout's feedback in a reflection request (built-in tasks: ≤ 130 characters)
RECORD_TOKENS = 16  # GEPA's headings around one rollout in its reflection request
TASK_DESCRIPTION_TOKENS = 100  # what a blind proposal reads instead of the rollouts


def text_tokens(text: str) -> int:
    """Tokens of a text, estimated from its length."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _task_entries(cfg: dict) -> list[str]:
    """The task entries the runs train on: tasks.train (or data_file), plasticity.task, the schedule."""
    entries = [cfg["tasks"]["data_file"] or cfg["tasks"]["train"]] if "main" in cfg["kinds"] else []
    if "plasticity" in cfg["kinds"]:
        entries += [cfg["tasks"]["data_file"] or cfg["tasks"]["train"], cfg["plasticity"]["task"]]
    if "continual" in cfg["kinds"]:
        entries += cfg["continual"]["schedule"]
    return list(dict.fromkeys(entries))


def entry_question_tokens(entry: str, cfg: dict) -> int | None:
    """Mean estimated tokens of a task's questions: 32 generated ones of a built-in family, the first 32
    of a published dataset whose files are here (a local path or the hub cache), every row of a user's
    file; None for a task the plan cannot read (a hub dataset not yet downloaded)."""
    from fst.tasks import DATASET_NAMES, TASK_NAMES, get_task, load_user_problems
    from fst.tasks.sources import first_problems

    if entry in TASK_NAMES:
        problems = get_task(entry).generate(random.Random(0), 32, exclude=set())
    elif entry in DATASET_NAMES:
        problems = first_problems(entry, cfg["datasets"][entry], 32)
    elif Path(entry).suffix in (".jsonl", ".parquet") and Path(entry).is_file():
        problems = load_user_problems(entry, "plan")
    else:
        return None
    if not problems:
        return None
    return round(sum(text_tokens(p.question) for p in problems) / len(problems))


def question_tokens(cfg: dict) -> tuple[int, list[str]]:
    """Estimated mean tokens of the questions the runs train on, and the tasks the plan could not read
    (taken as UNKNOWN_QUESTION_TOKENS)."""
    known = {entry: entry_question_tokens(entry, cfg) for entry in _task_entries(cfg)}
    unread = [entry for entry, tokens in known.items() if tokens is None]
    questions = [UNKNOWN_QUESTION_TOKENS if t is None else t for t in known.values()]
    return round(sum(questions) / len(questions)), unread


def prompt_tokens(cfg: dict, question: int, unread: list[str]) -> tuple[int, str]:
    """Estimated tokens of a policy prompt (chat template + seed prompt + question), and how."""
    seed = text_tokens(cfg["prompts"]["seed"])
    how = (f"chat template {CHAT_TEMPLATE_TOKENS} + seed prompt {seed} + question {question}; "
           f"characters / {CHARS_PER_TOKEN}")
    if unread:
        how += f"; {UNKNOWN_QUESTION_TOKENS} assumed for {', '.join(unread)} (not read by the plan)"
    return CHAT_TEMPLATE_TOKENS + seed + question, how


def reflection_input_tokens(cfg: dict, question: int) -> int:
    """Estimated input tokens of one reflection request: GEPA's instruction template, the current prompt
    (at most the larger of the seed prompt and reflection.max_tokens, the limit of the reply it came
    from) and the minibatch's b rollouts with their questions and feedback (a blind proposal: the task's
    description instead)."""
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    from fst.reflection import BLIND_PROMPT_TEMPLATE

    fast = cfg["fast"]
    current = max(text_tokens(cfg["prompts"]["seed"]), cfg["reflection"]["max_tokens"])
    if fast["proposer"] == "blind":
        return text_tokens(BLIND_PROMPT_TEMPLATE) + current + TASK_DESCRIPTION_TOKENS
    record = RECORD_TOKENS + question + cfg["rollout"]["max_new_tokens"] + FEEDBACK_TOKENS
    template = text_tokens(InstructionProposalSignature.default_prompt_template)
    return template + current + fast["reflection_minibatch_size"] * record


def slow_stage(cfg: dict) -> str:
    return "slow_lora" if cfg["slow"]["lora"]["enabled"] else "slow_full"


def stage_tokens(total: dict, cfg: dict, prompt: int) -> dict[str, int]:
    """Tokens per throughput stage (as benchmarks/throughput.yaml counts them), upper bounds."""
    new = cfg["rollout"]["max_new_tokens"]
    tokens = {
        "rollout": total["rl_rollouts"] * new,
        "gepa": total["gepa_metric_calls_max"] * new,
        "evaluate": total["evaluation_samples"] * new,
        "reflection": total["reflection_calls"] * cfg["reflection"]["max_tokens"]
        if cfg["reflection"]["backend"] == "local" else 0,  # openai: on the endpoint, not here
        slow_stage(cfg): total["rl_rollouts"] * (prompt + new),
    }
    return {stage: n for stage, n in tokens.items() if n}
