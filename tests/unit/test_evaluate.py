"""Evaluation: exact token KL to the base model, validation mean@k and out-of-domain accuracy."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch

from fst.evaluate import channel_decomposition, evaluate, sample_and_score, token_kl
from fst.generation import SamplingSettings, chat_prompt_ids
from fst.population import Member
from fst.tasks.splits import make_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SETTINGS = SamplingSettings(max_new_tokens=4, temperature=0.7, batch_size=32)
MEMBER = Member("m1", "You are a careful math tutor.", "seed", 1.0, None, 1)


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
    return sample_and_score(model, tokenizer, problems[0], MEMBER.text, 2, SETTINGS, 0, "prompt:m1")


def direct_kl(p_model, q_model, prompt, completion) -> tuple[float, int]:
    """Sum over completion positions of sum_v p(v) (log p(v) - log q(v)), one unpadded sequence."""
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(p_model(input_ids=ids).logits[0].double(), dim=-1)
        logq = torch.log_softmax(q_model(input_ids=ids).logits[0].double(), dim=-1)
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
    assert abs(token_kl(model, model, samples)) < 1e-6


def test_kl_to_a_different_model_matches_a_direct_computation(tiny, other, problems):
    model, tokenizer = tiny
    prompt = chat_prompt_ids(tokenizer, "Be brief.", problems[0][0].question)
    completion = [504, 3529, 314]
    one = pd.DataFrame({"prompt_ids": [prompt], "completion_ids": [completion]})
    kl = token_kl(other, model, one)
    total, count = direct_kl(other, model, prompt, completion)
    assert kl > 1e-4
    assert kl == pytest.approx(total / count, rel=1e-4)
    # the other direction: KL(base || policy)
    reverse, _ = direct_kl(model, other, prompt, completion)
    assert token_kl(model, other, one) == pytest.approx(reverse / count, rel=1e-4)


def test_kl_in_padded_batches_is_the_token_weighted_mean(tiny, other, samples):
    model = tiny[0]
    frame = samples.copy()
    # mixed completion lengths, and one empty completion that must be skipped
    frame.at[0, "completion_ids"] = list(frame.at[0, "completion_ids"])[:1]
    frame.at[1, "completion_ids"] = []
    total, count = 0.0, 0
    for prompt, completion in zip(frame["prompt_ids"], frame["completion_ids"], strict=True):
        if len(completion):
            kl, n = direct_kl(other, model, list(prompt), list(completion))
            total, count = total + kl, count + n
    expected = total / count
    assert token_kl(other, model, frame, batch_size=16) == pytest.approx(expected, rel=1e-4)
    assert token_kl(other, model, frame, batch_size=2) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("drifted", [False, True])
def test_evaluate_metric_rows_and_samples(tiny, other, problems, drifted):
    model, tokenizer = tiny
    val, ood = problems
    policy, base = (other, model) if drifted else (model, None)
    k = 2
    metrics, samples = evaluate(policy, tokenizer, base, val, MEMBER, ood, k, SETTINGS, seed=4)
    assert list(metrics.columns) == ["task", "setting", "metric", "value", "n"]
    rows = {(r.task, r.setting, r.metric): (r.value, r.n) for r in metrics.itertuples()}
    assert set(rows) == {
        ("arithmetic", "prompt:m1", "mean@2"),
        ("arithmetic", "prompt:m1", "truncated"),
        ("arithmetic", "prompt:m1", "kl_to_base"),
        ("code_output", "none", "greedy_accuracy"),
        ("claims", "none", "greedy_accuracy"),
    }
    assert len(samples) == k * len(val) + sum(len(p) for p in ood.values())
    val_rows = samples[samples["setting"] == "prompt:m1"]
    assert len(val_rows) == k * len(val)
    assert rows[("arithmetic", "prompt:m1", "mean@2")] == (pytest.approx(val_rows["reward"].mean()), 3)
    truncated = (val_rows["finish_reason"] == "length").mean()
    assert rows[("arithmetic", "prompt:m1", "truncated")][0] == pytest.approx(truncated)
    kl = rows[("arithmetic", "prompt:m1", "kl_to_base")][0]
    if drifted:
        assert kl == pytest.approx(token_kl(other, model, val_rows), rel=1e-6)
        assert kl > 0
    else:
        assert kl == 0.0
    for task, task_problems in ood.items():
        task_rows = samples[samples["task"] == task]
        assert len(task_rows) == len(task_problems)
        assert set(task_rows["setting"]) == {"none"}
        assert set(task_rows["system_text"]) == {""}
        assert rows[(task, "none", "greedy_accuracy")] == (
            pytest.approx(task_rows["reward"].mean()),
            len(task_problems),
        )
    fractions = metrics[metrics["metric"] != "kl_to_base"]["value"]
    assert fractions.between(0, 1).all()


def test_ood_evaluation_is_greedy(tiny, problems):
    model, tokenizer = tiny
    val, ood = problems
    _, first = evaluate(model, tokenizer, None, val, MEMBER, ood, 1, SETTINGS, seed=1)
    _, second = evaluate(model, tokenizer, None, val, MEMBER, ood, 1, SETTINGS, seed=2)
    ood_rows = first["setting"] == "none"
    assert list(first[ood_rows]["completion_ids"].map(tuple)) == list(
        second[second["setting"] == "none"]["completion_ids"].map(tuple)
    )


def test_channel_decomposition_cells_share_one_sampling_seed(tiny, other, problems):
    model, tokenizer = tiny
    seed_member = Member("seed", "Answer the question.", None, 1.0, None, 0)
    table, samples = channel_decomposition(
        {"base": model, "trained": other},
        tokenizer,
        problems[0],
        {"seed": seed_member, "evolved": MEMBER},
        2,
        SETTINGS,
        seed=5,
    )
    assert list(zip(table["weights"], table["prompt"], strict=True)) == [
        ("base", "seed"),
        ("base", "evolved"),
        ("trained", "seed"),
        ("trained", "evolved"),
    ]
    assert (table["n"] == len(problems[0])).all() and (table["metric"] == "mean@2").all()
    # each cell equals a separate evaluation of that weights/prompt pair with the same seed
    alone = sample_and_score(other, tokenizer, problems[0], MEMBER.text, 2, SETTINGS, 5, "prompt:m1")
    cell = samples[(samples["weights"] == "trained") & (samples["prompt"] == "evolved")]
    assert list(cell["completion_text"]) == list(alone["completion_text"])
    assert table["value"].iloc[3] == pytest.approx(alone["reward"].mean())
