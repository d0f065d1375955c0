"""Evaluation stage: validation mean@k with the arm's prompt, KL to the base model, out-of-domain.

One definition of drift for every arm (`kl_to_base`): the token-level KL(π_θ ‖ π_base) between the
temperature-τ distributions softmax(logits / τ), τ = rollout.temperature, on completions sampled
from π_θ at τ, in the context of the SEED prompt, summed exactly over the vocabulary at each position
(lower variance than the sampled log-ratio) and averaged over completion tokens. The same quantity in
the context of the arm's own prompt is `kl_to_base_own_prompt`. Frozen base weights (arm gepa) have
KL exactly 0 under this definition, written without sampling. Its interval resamples problems, each
with its completions' KL sum and token count (the statistic is a token-level mean).

Common random numbers: every evaluation of a run (each round, the channel decomposition, post-hoc
GEPA, the test split) samples with one seed, `evaluation_seed(run seed)`, so two evaluation points
differ only by weights and prompt: the same weights and prompt give the same numbers.

Intervals: every fraction (mean@k, truncated, greedy accuracy) gets a 95% percentile bootstrap
interval over problems (scipy.stats.bootstrap, fixed seed), in columns ci95_low / ci95_high.

Engines: every function here samples through an `engine(tokenizer, prompts, settings, seed)`, the
contract of the rollouts and GEPA's metric calls: `partial(fst.generation.sample, model)` with
transformers, a vLLM sampler's (fst.generation_vllm) on a GPU. The KL is scored with transformers
models in either case (the logits of two models over the same sequences); they are asked for only
once every sample is drawn, so that a vLLM engine can give its GPU memory back first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fst.generation import SamplingSettings, chat_prompt_ids
from fst.population import Member
from fst.tasks import Problem, score_reply

log = logging.getLogger(__name__)
NO_PROMPT = ""
METRIC_COLUMNS = ["task", "setting", "metric", "value", "n", "ci95_low", "ci95_high"]


@dataclass(frozen=True)
class Bootstrap:
    """The percentile bootstrap behind every interval: resamples and a fixed seed (reproducible)."""

    resamples: int
    seed: int


def evaluation_seed(run_seed: int) -> int:
    """The one sampling seed of every evaluation of a run (common random numbers across its points)."""
    return run_seed * 1_000_003 + 500_000


def bootstrap_interval(values, bootstrap: Bootstrap) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of `values` (one value per problem).

    NaN with fewer than two values; the value itself when all values are equal (nothing to resample).
    """
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:
        return float(values[0]), float(values[0])
    return _percentile_interval((values,), np.mean, bootstrap)


def _percentile_interval(data: tuple, statistic, bootstrap: Bootstrap, paired: bool = False):
    """scipy's 95% percentile bootstrap of `statistic` over `data`, with the fixed resamples and seed."""
    from scipy.stats import bootstrap as scipy_bootstrap

    result = scipy_bootstrap(
        data,
        statistic,
        paired=paired,
        n_resamples=bootstrap.resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(bootstrap.seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def per_problem(samples: pd.DataFrame, column: str = "reward") -> pd.Series:
    """Mean of `column` per problem (over its k samples), in the problems' order."""
    return samples.groupby("problem_id", sort=False)[column].mean()


def _row(task, setting, metric, per_problem_values: pd.Series, bootstrap: Bootstrap) -> tuple:
    low, high = bootstrap_interval(per_problem_values, bootstrap)
    return (task, setting, metric, float(per_problem_values.mean()), len(per_problem_values), low, high)


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


def sample_and_score(engine, tokenizer, problems, system_text, repeats, settings, seed, label):
    expanded = [p for p in problems for _ in range(repeats)]
    prompts = [chat_prompt_ids(tokenizer, system_text, p.question) for p in expanded]
    completions = engine(tokenizer, prompts, settings, seed)
    return _score_samples(expanded, prompts, completions, system_text, label)


def token_kl_per_completion(
    model, base, samples: pd.DataFrame, temperature: float, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Per completion (row of `samples`): the sum over its tokens of KL(model_τ ‖ base_τ) at each
    position (full vocabulary), and its token count; model_τ = softmax(logits / τ) is the distribution
    the completions were sampled from."""
    import torch

    sums, counts = np.zeros(len(samples["completion_ids"])), np.zeros(len(samples["completion_ids"]))
    sequences = [
        (i, list(p), list(c))
        for i, (p, c) in enumerate(zip(samples["prompt_ids"], samples["completion_ids"], strict=True))
        if len(c)
    ]
    for start in range(0, len(sequences), batch_size):
        batch = sequences[start : start + batch_size]
        width = max(len(p) + len(c) for _, p, c in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        attention = torch.zeros_like(ids)
        targets = torch.zeros_like(ids, dtype=torch.bool)
        for row, (_, prompt, completion) in enumerate(batch):
            seq = prompt + completion
            ids[row, : len(seq)] = torch.tensor(seq)
            attention[row, : len(seq)] = 1
            # logits at position t predict token t+1: completion tokens are predicted from len(prompt)-1
            targets[row, len(prompt) - 1 : len(seq) - 1] = True
        ids, attention, targets = (t.to(model.device) for t in (ids, attention, targets))
        with torch.inference_mode():
            logits_p = model(input_ids=ids, attention_mask=attention).logits.float() / temperature
            logits_q = base(input_ids=ids, attention_mask=attention).logits.float() / temperature
            logp, logq = logits_p.log_softmax(-1), logits_q.log_softmax(-1)
        kl = torch.where(targets, (logp.exp() * (logp - logq)).sum(-1), 0.0)  # a padding NaN stays out
        rows = [i for i, _, _ in batch]
        sums[rows] = kl.sum(-1).double().cpu().numpy()
        counts[rows] = targets.sum(-1).cpu().numpy()
    return sums, counts


def token_kl(model, base, samples: pd.DataFrame, temperature: float, batch_size: int = 16) -> float:
    """Mean over completion tokens of KL(model_τ ‖ base_τ) at each position (full vocabulary)."""
    sums, counts = token_kl_per_completion(model, base, samples, temperature, batch_size)
    return float(sums.sum() / max(counts.sum(), 1))


def ratio_interval(numerators, denominators, bootstrap: Bootstrap) -> tuple[float, float]:
    """95% percentile bootstrap interval of sum(numerators) / sum(denominators), resampling the pairs
    (one per problem): the interval of a token-level mean whose problems have different token counts."""
    numerators, denominators = np.asarray(numerators, float), np.asarray(denominators, float)
    if len(numerators) < 2:
        return float("nan"), float("nan")
    ratios = numerators[denominators > 0] / denominators[denominators > 0]
    if len(ratios) == 0 or np.ptp(ratios) == 0:  # nothing to resample
        value = numerators.sum() / max(denominators.sum(), 1)
        return float(value), float(value)
    return _percentile_interval(
        (numerators, denominators),
        lambda n, d, axis=-1: n.sum(axis=axis) / np.maximum(d.sum(axis=axis), 1),
        bootstrap,
        paired=True,
    )


def kl_row(task, setting, metric, kl_sums, samples, bootstrap: Bootstrap) -> tuple:
    """A KL metric row: the token-level mean over all completions and its bootstrap interval over
    problems (each problem's token KL sum and token count resampled together). `kl_sums(samples)` gives
    each completion's KL sum and token count (token_kl_per_completion of the policy and the base)."""
    sums, counts = kl_sums(samples)
    per = pd.DataFrame({"problem_id": samples["problem_id"].to_numpy(), "kl": sums, "tokens": counts})
    per = per.groupby("problem_id", sort=False)[["kl", "tokens"]].sum()
    low, high = ratio_interval(per["kl"], per["tokens"], bootstrap)
    return (task, setting, metric, float(sums.sum() / max(counts.sum(), 1)), len(per), low, high)


def evaluate(
    engine,
    tokenizer,
    kl_sums,
    val: list[Problem],
    member: Member,
    seed_member: Member,
    ood: dict[str, list[Problem]],
    k: int,
    settings: SamplingSettings,
    seed: int,
    bootstrap: Bootstrap,
    other_tasks: dict[str, list[Problem]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Returns (metrics: one row per task/setting/metric, samples: every scored completion).

    `member` is the arm's prompt, `seed_member` the seed prompt (the context of `kl_to_base`).
    `other_tasks` (a continual schedule's tasks besides the current one) get mean@k under the arm's
    prompt too, with the same k and seed as `val`: forgetting of earlier tasks, measured like the
    current one.
    `kl_sums` is None when the policy is the base model itself (KL is then exactly 0, not sampled),
    else kl_sums(samples) -> (per-completion KL sums, token counts) of the policy against the base
    (token_kl_per_completion), called once all samples are drawn.
    """
    task, own = val[0].task, f"prompt:{member.id}"
    context = f"prompt:{seed_member.id}"
    val_samples = sample_and_score(engine, tokenizer, val, member.text, k, settings, seed, own)
    frames = [val_samples]
    seed_samples = val_samples
    if kl_sums is not None and member.text != seed_member.text:
        # the seed prompt's context: sampled from π_θ at τ with the same seed
        seed_samples = sample_and_score(
            engine, tokenizer, val, seed_member.text, k, settings, seed, f"kl_context:{context}"
        )
        frames.append(seed_samples)
    greedy = SamplingSettings(settings.max_new_tokens, 0.0, settings.batch_size)
    other_frames = {
        name: sample_and_score(engine, tokenizer, problems, member.text, k, settings, seed, own)
        for name, problems in (other_tasks or {}).items()
    }
    ood_frames = {
        ood_task: sample_and_score(engine, tokenizer, problems, NO_PROMPT, 1, greedy, seed, "none")
        for ood_task, problems in ood.items()
    }
    truncated = val_samples.assign(length=(val_samples["finish_reason"] == "length").astype(float))
    metrics = [
        _row(task, own, f"mean@{k}", per_problem(val_samples), bootstrap),
        _row(task, own, "truncated", per_problem(truncated, "length"), bootstrap),
    ]
    if kl_sums is None:  # frozen base weights: exactly 0, nothing to resample
        metrics += [(task, context, "kl_to_base", 0.0, len(val), 0.0, 0.0),
                    (task, own, "kl_to_base_own_prompt", 0.0, len(val), 0.0, 0.0)]
    else:
        own_row = kl_row(task, own, "kl_to_base_own_prompt", kl_sums, val_samples, bootstrap)
        seed_row = (
            (task, context, "kl_to_base", *own_row[3:]) if seed_samples is val_samples
            else kl_row(task, context, "kl_to_base", kl_sums, seed_samples, bootstrap)
        )
        metrics += [seed_row, own_row]
    for other_task, other_samples in other_frames.items():
        frames.append(other_samples)
        metrics.append(_row(other_task, own, f"mean@{k}", per_problem(other_samples), bootstrap))
    for ood_task, ood_samples in ood_frames.items():
        frames.append(ood_samples)
        metrics.append(_row(ood_task, "none", "greedy_accuracy", per_problem(ood_samples), bootstrap))
        log.info("ood %s: %.3f", ood_task, ood_samples["reward"].mean())
    table = pd.DataFrame(metrics, columns=METRIC_COLUMNS)
    return table, pd.concat(frames, ignore_index=True)


def select_round(validation: dict[int, float]) -> int:
    """The round a validation curve selects: its running maximum's argmax, the earliest on ties."""
    rounds = sorted(validation)
    values = np.array([validation[r] for r in rounds])
    return rounds[int(np.argmax(values))]


def evaluate_test(
    engine, tokenizer, test: list[Problem], member: Member, k: int, settings: SamplingSettings, seed: int,
    bootstrap: Bootstrap,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Held-out test mean@k of one weights/prompt pair: (one metric row, the scored samples)."""
    setting = f"prompt:{member.id}"
    samples = sample_and_score(engine, tokenizer, test, member.text, k, settings, seed, setting)
    row = _row(test[0].task, setting, f"mean@{k}", per_problem(samples), bootstrap)
    return pd.DataFrame([row], columns=METRIC_COLUMNS), samples


def channel_decomposition(
    weights: dict, tokenizer, val: list[Problem], prompts: dict[str, Member], k: int,
    settings: SamplingSettings, seed: int, bootstrap: Bootstrap,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validation mean@k of every {weights} x {prompt} combination, with one sampling seed for all.

    `weights` maps a name ("base", "trained") to a function that opens an engine on those weights as a
    context manager (one engine at a time: on a GPU, two vLLM engines would not fit together),
    `prompts` a name ("seed", "evolved") to a population member. The run's evaluation seed (common
    random numbers) makes the cells' differences due to weights and prompt rather than to the draw,
    and the base-weights + seed-prompt cell equal to the run's evaluation before any training.
    """
    rows, frames = [], []
    for weights_name, opened in weights.items():
        with opened() as engine:
            cells = {name: sample_and_score(engine, tokenizer, val, member.text, k, settings, seed,
                                            f"prompt:{member.id}") for name, member in prompts.items()}
        for prompt_name, member in prompts.items():
            label, samples = f"prompt:{member.id}", cells[prompt_name]
            samples.insert(0, "weights", weights_name)
            samples.insert(1, "prompt", prompt_name)
            frames.append(samples)
            row = _row(val[0].task, label, f"mean@{k}", per_problem(samples), bootstrap)
            rows.append((weights_name, prompt_name, member.id, *row[:1], *row[2:]))
            log.info("decomposition %s weights x %s prompt: %.4f", weights_name, prompt_name, row[3])
    columns = ["weights", "prompt", "member_id", "task", "metric", "value", "n", "ci95_low", "ci95_high"]
    return pd.DataFrame(rows, columns=columns), pd.concat(frames, ignore_index=True)
