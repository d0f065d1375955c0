"""Evaluation stage: validation mean@k with the arm's prompt, KL to the base model, out-of-domain.

KL(π_θ ‖ π_base) is measured token by token on the policy's own validation samples, as the exact
sum over the vocabulary at each position (lower variance than the sampled log-ratio), averaged over
completion tokens. TRL's own `kl` is against the round's reference model, not the base: see notes.
"""

from __future__ import annotations

import logging

import pandas as pd

from fst.generation import SamplingSettings, chat_prompt_ids, sample
from fst.population import Member
from fst.tasks import Problem, score_reply

log = logging.getLogger(__name__)
NO_PROMPT = ""


def _score_samples(problems, prompts, completions, system_text, label) -> pd.DataFrame:
    rows = []
    for problem, prompt, done in zip(problems, prompts, completions, strict=True):
        score = score_reply(problem, done.text)
        rows.append(
            {
                "task": problem.task,
                "setting": label,
                "problem_id": problem.id,
                "system_text": system_text,
                "prompt_ids": prompt,
                "completion_ids": done.ids,
                "completion_text": done.text,
                "finish_reason": done.finish_reason,
                "reward": score.reward,
                "feedback": score.feedback,
            }
        )
    return pd.DataFrame(rows)


def sample_and_score(model, tokenizer, problems, system_text, repeats, settings, seed, label):
    expanded = [p for p in problems for _ in range(repeats)]
    prompts = [chat_prompt_ids(tokenizer, system_text, p.question) for p in expanded]
    completions = sample(model, tokenizer, prompts, settings, seed)
    return _score_samples(expanded, prompts, completions, system_text, label)


def token_kl(model, base, samples: pd.DataFrame, batch_size: int = 16) -> float:
    """Mean over completion tokens of KL(model ‖ base) at each position (full vocabulary)."""
    import torch

    total, count = 0.0, 0
    sequences = [
        (list(p), list(c)) for p, c in zip(samples["prompt_ids"], samples["completion_ids"], strict=True)
    ]
    for start in range(0, len(sequences), batch_size):
        batch = [s for s in sequences[start : start + batch_size] if s[1]]
        if not batch:
            continue
        width = max(len(p) + len(c) for p, c in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        targets = torch.zeros_like(ids, dtype=torch.bool)
        for row, (prompt, completion) in enumerate(batch):
            seq = prompt + completion
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            # logits at position t predict token t+1: completion tokens are predicted from len(prompt)-1
            targets[row, len(prompt) - 1 : len(seq) - 1] = True
        with torch.inference_mode():
            logp = model(input_ids=ids, attention_mask=attention).logits.float().log_softmax(-1)
            logq = base(input_ids=ids, attention_mask=attention).logits.float().log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1)
        total += kl[targets].sum().item()
        count += int(targets.sum())
    return total / max(count, 1)


def evaluate(
    model,
    tokenizer,
    base_model,
    val: list[Problem],
    member: Member,
    ood: dict[str, list[Problem]],
    k: int,
    settings: SamplingSettings,
    seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (metrics: one row per task/setting/metric, samples: every scored completion).

    `base_model` None means the policy is the base model itself (KL is then exactly 0).
    """
    val_samples = sample_and_score(
        model, tokenizer, val, member.text, k, settings, seed, f"prompt:{member.id}"
    )
    metrics = [
        (val[0].task, f"prompt:{member.id}", f"mean@{k}", val_samples["reward"].mean(), len(val)),
        (
            val[0].task,
            f"prompt:{member.id}",
            "truncated",
            (val_samples["finish_reason"] == "length").mean(),
            len(val),
        ),
    ]
    kl = 0.0 if base_model is None else token_kl(model, base_model, val_samples)
    metrics.append((val[0].task, f"prompt:{member.id}", "kl_to_base", kl, len(val)))
    greedy = SamplingSettings(settings.max_new_tokens, 0.0, settings.batch_size)
    frames = [val_samples]
    for task, problems in ood.items():
        ood_samples = sample_and_score(model, tokenizer, problems, NO_PROMPT, 1, greedy, seed, "none")
        frames.append(ood_samples)
        metrics.append((task, "none", "greedy_accuracy", ood_samples["reward"].mean(), len(problems)))
        log.info("ood %s: %.3f", task, ood_samples["reward"].mean())
    table = pd.DataFrame(metrics, columns=["task", "setting", "metric", "value", "n"])
    return table, pd.concat(frames, ignore_index=True)


def channel_decomposition(
    weights: dict, tokenizer, val: list[Problem], prompts: dict[str, Member], k: int,
    settings: SamplingSettings, seed: int,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation mean@k of every {weights} x {prompt} combination, with one sampling seed for all.

    `weights` maps a name ("base", "trained") to a model, `prompts` a name ("seed", "evolved") to a
    population member. A shared seed (common random numbers) makes the cells' differences due to
    weights and prompt rather than to the draw.
    """
    rows, frames = [], []
    for weights_name, model in weights.items():
        for prompt_name, member in prompts.items():
            label = f"prompt:{member.id}"
            samples = sample_and_score(model, tokenizer, val, member.text, k, settings, seed, label)
            samples.insert(0, "weights", weights_name)
            samples.insert(1, "prompt", prompt_name)
            frames.append(samples)
            value = samples["reward"].mean()
            rows.append((weights_name, prompt_name, member.id, val[0].task, f"mean@{k}", value, len(val)))
            log.info("decomposition %s weights x %s prompt: %.4f", weights_name, prompt_name, value)
    table = pd.DataFrame(rows, columns=["weights", "prompt", "member_id", "task", "metric", "value", "n"])
    return table, pd.concat(frames, ignore_index=True)
