"""Evaluation: exact token KL to the base model, validation mean@k and out-of-domain accuracy."""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from fst.evaluate import (
    Bootstrap,
    bootstrap_interval,
    channel_decomposition,
    evaluate,
    evaluate_test,
    ratio_interval,
    sample_and_score,
    select_round,
    token_kl,
    token_kl_per_completion,
)
from fst.generation import SamplingSettings, chat_prompt_ids, sample
from fst.population import Member
from fst.tasks.splits import make_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = SamplingSettings(max_new_tokens=4, temperature=0.7, batch_size=32)
MEMBER = Member("m1", "You are a careful math tutor.", "seed", 1.0, None, 1)
SEED_MEMBER = Member("seed", "Answer the question.", None, 1.0, None, 0)
BOOTSTRAP = Bootstrap(resamples=500, seed=0)


@pytest.fixture(scope="module")
def other(tiny):
    """The tiny model with perturbed weights: a policy that has drifted from its base."""
    model = copy.deepcopy(tiny[0])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers.1." in name or "embed_tokens" in name:
                param.add_(torch.randn(param.shape, generator=generator) * 0.5 * param.std())
    return model


@pytest.fixture(scope="module")
def problems():
    val = make_splits("arithmetic", 0, {"val": 3})["val"]
    ood = {
        "code_output": make_splits("code_output", 0, {"test": 2})["test"],
        "claims": make_splits("claims", 0, {"test": 2})["test"],
    }
    return val, ood


@pytest.fixture(scope="module")
def samples(tiny, problems):
    model, tokenizer = tiny
    engine = partial(sample, model)
    return sample_and_score(engine, tokenizer, problems[0], MEMBER.text, 2, SETTINGS, 0, "prompt:m1")


def direct_kl(p_model, q_model, prompt, completion, temperature=1.0) -> tuple[float, int]:
    """Sum over completion positions of sum_v p(v) (log p(v) - log q(v)), one unpadded sequence,
    p and q the temperature-τ distributions softmax(logits / τ)."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(p_model(input_ids=ids).logits[0].double() / temperature, dim=-1)
        logq = torch.log_softmax(q_model(input_ids=ids).logits[0].double() / temperature, dim=-1)
    total = 0.0
    for t in range(len(prompt) - 1, len(prompt) + len(completion) - 1):
        p = logp[t].exp()
        total += float((p * (logp[t] - logq[t])).sum())
    return total, len(completion)


def test_sample_and_score_repeats_each_problem_k_times(samples, problems):
    val = problems[0]
    assert len(samples) == 2 * len(val)
    assert list(samples["problem_id"]) == [p.id for p in val for _ in range(2)]
    assert set(samples["setting"]) == {"prompt:m1"}
    assert set(samples["system_text"]) == {MEMBER.text}
    assert set(samples["reward"]) <= {0.0, 1.0}


def test_kl_of_a_model_to_itself_is_zero(tiny, samples):
    model = tiny[0]
    assert abs(token_kl(model, model, samples, 0.7)) < 1e-6


def test_kl_to_a_different_model_matches_a_direct_computation(tiny, other, problems):
    model, tokenizer = tiny
    prompt = chat_prompt_ids(tokenizer, "Be brief.", problems[0][0].question)
    completion = [504, 3529, 314]
    one = pd.DataFrame({"prompt_ids": [prompt], "completion_ids": [completion]})
    kl = token_kl(other, model, one, 1.0)
    total, count = direct_kl(other, model, prompt, completion)
    assert kl > 1e-4
    assert kl == pytest.approx(total / count, rel=1e-4)
    # the other direction: KL(base || policy)
    reverse, _ = direct_kl(model, other, prompt, completion)
    assert token_kl(model, other, one, 1.0) == pytest.approx(reverse / count, rel=1e-4)


def test_kl_in_padded_batches_is_the_token_weighted_mean(tiny, other, samples):
    model = tiny[0]
    frame = samples.copy()
    # mixed completion lengths, and one empty completion that must be skipped
    frame.at[0, "completion_ids"] = list(frame.at[0, "completion_ids"])[:1]
    frame.at[1, "completion_ids"] = []
    total, count = 0.0, 0
    for prompt, completion in zip(frame["prompt_ids"], frame["completion_ids"], strict=True):
        if len(completion):
            kl, n = direct_kl(other, model, list(prompt), list(completion), 0.7)
            total, count = total + kl, count + n
    expected = total / count
    assert token_kl(other, model, frame, 0.7, batch_size=16) == pytest.approx(expected, rel=1e-4)
    assert token_kl(other, model, frame, 0.7, batch_size=2) == pytest.approx(expected, rel=1e-4)


def test_kl_is_taken_between_the_temperature_tau_distributions(tiny, other, problems):
    """The completions are sampled at τ: KL is between softmax(logits / τ) of policy and base."""
    model, tokenizer = tiny
    prompt = chat_prompt_ids(tokenizer, "Be brief.", problems[0][0].question)
    completion = [504, 3529, 314]
    one = pd.DataFrame({"prompt_ids": [prompt], "completion_ids": [completion]})
    at_tau, count = direct_kl(other, model, prompt, completion, temperature=0.7)
    at_one, _ = direct_kl(other, model, prompt, completion, temperature=1.0)
    assert at_tau / count != pytest.approx(at_one / count, rel=1e-3)  # the temperature matters here
    assert token_kl(other, model, one, 0.7) == pytest.approx(at_tau / count, rel=1e-4)


@pytest.mark.parametrize("drifted", [False, True])
def test_evaluate_metric_rows_and_samples(tiny, other, problems, drifted):
    model, tokenizer = tiny
    val, ood = problems
    policy = other if drifted else model
    kl_sums = partial(token_kl_per_completion, other, model, temperature=0.7) if drifted else None
    k = 2
    metrics, samples = evaluate(
        partial(sample, policy), tokenizer, kl_sums, val, MEMBER, SEED_MEMBER, ood, k, SETTINGS, seed=4,
        bootstrap=BOOTSTRAP,
    )
    assert list(metrics.columns) == ["task", "setting", "metric", "value", "n", "ci95_low", "ci95_high"]
    rows = {(r.task, r.setting, r.metric): (r.value, r.n) for r in metrics.itertuples()}
    assert set(rows) == {
        ("arithmetic", "prompt:m1", "mean@2"),
        ("arithmetic", "prompt:m1", "truncated"),
        ("arithmetic", "prompt:seed", "kl_to_base"),
        ("arithmetic", "prompt:m1", "kl_to_base_own_prompt"),
        ("code_output", "none", "greedy_accuracy"),
        ("claims", "none", "greedy_accuracy"),
    }
    # with drifted weights, the seed prompt's context is sampled too (for kl_to_base)
    seed_context = k * len(val) if drifted else 0
    assert len(samples) == k * len(val) + seed_context + sum(len(p) for p in ood.values())
    val_rows = samples[samples["setting"] == "prompt:m1"]
    assert len(val_rows) == k * len(val)
    assert rows[("arithmetic", "prompt:m1", "mean@2")] == (pytest.approx(val_rows["reward"].mean()), 3)
    truncated = (val_rows["finish_reason"] == "length").mean()
    assert rows[("arithmetic", "prompt:m1", "truncated")][0] == pytest.approx(truncated)
    kl = rows[("arithmetic", "prompt:seed", "kl_to_base")][0]
    own_kl = rows[("arithmetic", "prompt:m1", "kl_to_base_own_prompt")][0]
    kl_rows = metrics[metrics["metric"].str.startswith("kl_to_base")]
    if drifted:
        assert own_kl == pytest.approx(token_kl(other, model, val_rows, SETTINGS.temperature), rel=1e-6)
        assert kl > 0 and own_kl > 0
        # every KL has its bootstrap interval over problems, around the token-level mean
        assert (kl_rows["ci95_low"] < kl_rows["value"]).all()
        assert (kl_rows["value"] < kl_rows["ci95_high"]).all()
    else:
        assert kl == own_kl == 0.0
        assert (kl_rows["ci95_low"] == 0).all() and (kl_rows["ci95_high"] == 0).all()
    for task, task_problems in ood.items():
        task_rows = samples[samples["task"] == task]
        assert len(task_rows) == len(task_problems)
        assert set(task_rows["setting"]) == {"none"}
        assert set(task_rows["system_text"]) == {""}
        assert rows[(task, "none", "greedy_accuracy")] == (
            pytest.approx(task_rows["reward"].mean()),
            len(task_problems),
        )
    fractions = metrics[~metrics["metric"].str.startswith("kl_to_base")]
    assert fractions["value"].between(0, 1).all()
    assert (fractions["ci95_low"] <= fractions["value"] + 1e-12).all()
    assert (fractions["value"] <= fractions["ci95_high"] + 1e-12).all()


def test_kl_to_base_is_measured_in_the_seed_prompts_context(tiny, other, problems):
    """Every arm's KL is taken on completions sampled with the SEED prompt (same seed, same τ); the
    arm's own prompt gives the second number. With the seed prompt itself both are one number."""
    model, tokenizer = tiny
    val = problems[0]
    drifted = partial(sample, other)
    kl_sums = partial(token_kl_per_completion, other, model, temperature=SETTINGS.temperature)
    metrics, samples = evaluate(
        drifted, tokenizer, kl_sums, val, MEMBER, SEED_MEMBER, {}, 2, SETTINGS, 4, BOOTSTRAP
    )
    values = metrics.set_index("metric")["value"]
    in_seed_context = sample_and_score(drifted, tokenizer, val, SEED_MEMBER.text, 2, SETTINGS, 4, "x")
    assert values["kl_to_base"] == pytest.approx(token_kl(other, model, in_seed_context, 0.7), rel=1e-6)
    context_rows = samples[samples["setting"] == "kl_context:prompt:seed"]
    assert list(context_rows["completion_text"]) == list(in_seed_context["completion_text"])
    own = samples[samples["setting"] == "prompt:m1"]
    assert values["kl_to_base_own_prompt"] == pytest.approx(token_kl(other, model, own, 0.7), rel=1e-6)
    assert values["kl_to_base"] != pytest.approx(values["kl_to_base_own_prompt"], rel=1e-3)
    seed_only = SEED_MEMBER
    same, _ = evaluate(drifted, tokenizer, kl_sums, val, seed_only, seed_only, {}, 2, SETTINGS, 4, BOOTSTRAP)
    same_values = same.set_index("metric")["value"]
    assert same_values["kl_to_base"] == same_values["kl_to_base_own_prompt"] == values["kl_to_base"]


def test_bootstrap_interval_is_reproducible_and_brackets_the_mean():
    values = [0.0, 1.0, 0.5, 1.0, 0.0, 0.0, 1.0, 0.5]
    low, high = bootstrap_interval(values, BOOTSTRAP)
    assert low < sum(values) / len(values) < high
    assert (low, high) == bootstrap_interval(values, BOOTSTRAP)  # fixed seed: the same interval
    assert bootstrap_interval([0.25, 0.25, 0.25], BOOTSTRAP) == (0.25, 0.25)  # nothing to resample
    assert all(map(math.isnan, bootstrap_interval([1.0], BOOTSTRAP)))


def test_ratio_interval_resamples_problems_with_their_token_counts():
    """The KL interval: sum(KL) / sum(tokens) over resampled problems, each problem's pair kept together."""
    kl_sums, tokens = [0.2, 0.9, 0.1, 1.6, 0.4], [4, 3, 5, 8, 2]
    low, high = ratio_interval(kl_sums, tokens, BOOTSTRAP)
    assert low < sum(kl_sums) / sum(tokens) < high
    assert (low, high) == ratio_interval(kl_sums, tokens, BOOTSTRAP)
    # a problem with many tokens weighs more than one with few: not the mean of per-problem ratios
    assert ratio_interval([1.0, 1.0], [1, 1], BOOTSTRAP) == (1.0, 1.0)
    manual = np.random.default_rng(0)
    pairs = np.array([kl_sums, tokens], dtype=float).T
    draws = [pairs[manual.integers(0, 5, 5)] for _ in range(4000)]
    ratios = np.array([d[:, 0].sum() / d[:, 1].sum() for d in draws])
    assert low == pytest.approx(np.quantile(ratios, 0.025), abs=0.02)
    assert high == pytest.approx(np.quantile(ratios, 0.975), abs=0.02)


def test_select_round_is_the_running_maximum_earliest_on_ties():
    assert select_round({0: 0.1, 1: 0.5, 2: 0.3, 3: 0.5}) == 1
    assert select_round({2: 0.4, 0: 0.4, 1: 0.2}) == 0
    assert select_round({0: 0.1, 1: 0.2, 2: 0.3}) == 2


def test_test_evaluation_is_the_validation_sampling_on_the_test_split(tiny, problems):
    model, tokenizer = tiny
    test = make_splits("arithmetic", 0, {"test": 3})["test"]
    engine = partial(sample, model)
    table, samples = evaluate_test(engine, tokenizer, test, MEMBER, 2, SETTINGS, 7, BOOTSTRAP)
    (row,) = table.to_dict("records")
    alone = sample_and_score(engine, tokenizer, test, MEMBER.text, 2, SETTINGS, 7, "prompt:m1")
    assert row["metric"] == "mean@2" and row["n"] == 3
    assert row["value"] == pytest.approx(alone["reward"].mean())
    assert list(samples["completion_text"]) == list(alone["completion_text"])


def test_ood_evaluation_is_greedy(tiny, problems):
    model, tokenizer = tiny
    val, ood = problems
    engine = partial(sample, model)
    _, first = evaluate(engine, tokenizer, None, val, MEMBER, SEED_MEMBER, ood, 1, SETTINGS, 1, BOOTSTRAP)
    _, second = evaluate(engine, tokenizer, None, val, MEMBER, SEED_MEMBER, ood, 1, SETTINGS, 2, BOOTSTRAP)
    ood_rows = first["setting"] == "none"
    assert list(first[ood_rows]["completion_ids"].map(tuple)) == list(
        second[second["setting"] == "none"]["completion_ids"].map(tuple)
    )


def test_other_tasks_of_a_schedule_are_scored_like_the_current_one(tiny, problems):
    """A continual run's evaluation: every other task of the schedule gets mean@k under the arm's
    prompt, sampled as that task alone would be (same k, same seed), beside the current task's rows."""
    model, tokenizer = tiny
    val, _ = problems
    others = {"claims": make_splits("claims", 0, {"val": 3})["val"]}
    engine = partial(sample, model)
    table, samples = evaluate(engine, tokenizer, None, val, MEMBER, SEED_MEMBER, {}, 2, SETTINGS, 5,
                              BOOTSTRAP, other_tasks=others)
    rows = table[table["metric"] == "mean@2"].set_index("task")
    alone = sample_and_score(engine, tokenizer, others["claims"], MEMBER.text, 2, SETTINGS, 5, "prompt:m1")
    assert set(rows.index) == {"arithmetic", "claims"}
    assert rows.loc["claims", "setting"] == "prompt:m1" and rows.loc["claims", "n"] == 3
    assert rows.loc["claims", "value"] == pytest.approx(alone["reward"].mean())
    claims = samples[samples["task"] == "claims"]
    assert list(claims["completion_text"]) == list(alone["completion_text"])
    assert not (table["metric"].str.startswith("kl") & (table["task"] == "claims")).any()


def test_channel_decomposition_cells_share_one_sampling_seed(tiny, other, problems):
    model, tokenizer = tiny
    trained = partial(sample, other)
    table, samples = channel_decomposition(
        {"base": lambda: nullcontext(partial(sample, model)), "trained": lambda: nullcontext(trained)},
        tokenizer,
        problems[0],
        {"seed": SEED_MEMBER, "evolved": MEMBER},
        2,
        SETTINGS,
        seed=5,
        bootstrap=BOOTSTRAP,
    )
    assert list(zip(table["weights"], table["prompt"], strict=True)) == [
        ("base", "seed"),
        ("base", "evolved"),
        ("trained", "seed"),
        ("trained", "evolved"),
    ]
    assert (table["n"] == len(problems[0])).all() and (table["metric"] == "mean@2").all()
    # each cell equals a separate evaluation of that weights/prompt pair with the same seed
    alone = sample_and_score(trained, tokenizer, problems[0], MEMBER.text, 2, SETTINGS, 5, "prompt:m1")
    cell = samples[(samples["weights"] == "trained") & (samples["prompt"] == "evolved")]
    assert list(cell["completion_text"]) == list(alone["completion_text"])
    assert table["value"].iloc[3] == pytest.approx(alone["reward"].mean())
    assert {"ci95_low", "ci95_high"} <= set(table.columns)
