"""Rollout stage (G completions per problem, mixed over the population) and the score stage."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from fst.artifacts import write_parquet
from fst.generation import SamplingSettings
from fst.population import Member, spread_over_group
from fst.reward import score_rollouts
from fst.rollout import generate_rollouts
from fst.tasks.splits import make_splits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

G = 4
SEED = 123
ROLLOUT_COLUMNS = {
    "round", "problem_id", "task", "group_index", "sample_index", "member_id", "system_text",
    "user_text", "prompt_ids", "completion_text", "completion_ids", "logprobs", "finish_reason",
    "backend", "seed", "temperature",
}  # fmt: skip
SCORE_COLUMNS = {"reward", "components", "feedback", "answer"}


@pytest.fixture(scope="module")
def problems():
    return make_splits("arithmetic", 0, {"train": 3})["train"]


@pytest.fixture(scope="module")
def members():
    # listed lightest first: the group must still start with the heaviest
    return [
        Member("light", "Answer tersely.", "seed", 0.3, 0.2, 1),
        Member("heavy", "You are a careful math tutor. End with the number.", None, 0.7, 0.5, 0),
    ]


SETTINGS = SamplingSettings(max_new_tokens=4, temperature=0.7, batch_size=32)


@pytest.fixture(scope="module")
def rollouts(tiny, problems, members):
    model, tokenizer = tiny
    return generate_rollouts(model, tokenizer, problems, members, G, SETTINGS, SEED, 2, "transformers")


def test_one_row_per_completion_with_the_design_columns(rollouts, problems):
    assert len(rollouts) == len(problems) * G
    assert set(rollouts.columns) >= ROLLOUT_COLUMNS
    assert (rollouts["round"] == 2).all()
    assert (rollouts["seed"] == SEED).all()
    assert (rollouts["backend"] == "transformers").all()
    assert (rollouts["temperature"] == SETTINGS.temperature).all()
    assert set(rollouts["finish_reason"]) <= {"stop", "length"}
    for ids, logprobs in zip(rollouts["completion_ids"], rollouts["logprobs"], strict=True):
        assert 1 <= len(ids) == len(logprobs) <= SETTINGS.max_new_tokens
        assert all(lp <= 0 for lp in logprobs)


def test_groups_and_sample_indices(rollouts, problems):
    for group, problem in enumerate(problems):
        rows = rollouts[rollouts["group_index"] == group]
        assert list(rows["sample_index"]) == list(range(G))
        assert set(rows["problem_id"]) == {problem.id}
        assert set(rows["task"]) == {"arithmetic"}
        assert set(rows["user_text"]) == {problem.question}
    # groups are contiguous, in problem order (the slow stage reads whole groups in row order)
    assert list(rollouts["group_index"]) == [g for g in range(len(problems)) for _ in range(G)]


def test_members_are_spread_over_each_group_heaviest_first(rollouts, members):
    texts = {m.id: m.text for m in members}
    for _, rows in rollouts.groupby("group_index"):
        assert list(rows["member_id"]) == ["heavy", "light", "heavy", "light"]
        assert Counter(rows["member_id"]) == {"heavy": G // 2, "light": G // 2}
    for member_id, system_text in zip(rollouts["member_id"], rollouts["system_text"], strict=True):
        assert system_text == texts[member_id]


def test_prompt_ids_are_what_the_model_saw(rollouts, tiny):
    _, tokenizer = tiny
    for row in rollouts.itertuples():
        text = tokenizer.decode(list(row.prompt_ids))
        assert f"<|im_start|>system\n{row.system_text}<|im_end|>" in text
        assert row.user_text in text
        assert text.endswith("<|im_start|>assistant\n")
        assert row.completion_text == tokenizer.decode(list(row.completion_ids), skip_special_tokens=True)


def test_rollouts_are_reproducible_and_seeded(tiny, problems, members, rollouts):
    model, tokenizer = tiny
    again = generate_rollouts(model, tokenizer, problems, members, G, SETTINGS, SEED, 2, "transformers")
    pd.testing.assert_frame_equal(again, rollouts)
    other = generate_rollouts(model, tokenizer, problems, members, G, SETTINGS, SEED + 1, 2, "transformers")
    assert list(other["completion_ids"].map(tuple)) != list(rollouts["completion_ids"].map(tuple))


def test_rollouts_survive_parquet(rollouts, tmp_path):
    write_parquet(rollouts, tmp_path / "rollouts.parquet")
    back = pd.read_parquet(tmp_path / "rollouts.parquet")
    assert list(back.columns) == list(rollouts.columns)
    assert [list(x) for x in back["completion_ids"]] == list(rollouts["completion_ids"])
    assert [list(x) for x in back["prompt_ids"]] == list(rollouts["prompt_ids"])


@pytest.mark.parametrize(("weights", "expected"), [((1, 2, 3), "cbac"), ((5,), "aaaa")])
def test_spread_over_group(weights, expected):
    members = [Member(chr(ord("a") + i), "", None, w, None, 0) for i, w in enumerate(weights)]
    assert "".join(m.id for m in spread_over_group(members, 4)) == expected


def test_score_adds_reward_components_feedback_and_answer(rollouts, problems):
    by_id = {p.id: p for p in problems}
    frame = rollouts.copy()
    first = problems[0]
    frame.loc[0, "completion_text"] = f"Let me think. The answer is {first.answer}."
    frame.loc[1, "completion_text"] = "I am not sure."
    scored = score_rollouts(frame, by_id)
    assert set(scored.columns) == set(frame.columns) | SCORE_COLUMNS
    assert len(scored) == len(frame)
    pd.testing.assert_frame_equal(scored[list(frame.columns)], frame)
    assert "reward" not in frame.columns, "scoring must not modify its input"
    assert scored.loc[0, "reward"] == 1.0
    assert scored.loc[1, "reward"] == 0.0
    assert json.loads(scored.loc[0, "components"]) == {"correct": 1.0, "parsed": 1.0}
    assert json.loads(scored.loc[1, "components"]) == {"correct": 0.0, "parsed": 0.0}
    assert first.answer in scored.loc[1, "feedback"]
    assert list(scored["answer"]) == [by_id[pid].answer for pid in scored["problem_id"]]
    assert set(scored["reward"]) <= {0.0, 1.0}
    assert all(isinstance(f, str) and f for f in scored["feedback"])


def test_score_rejects_unknown_problem_ids(rollouts, problems):
    known = {p.id: p for p in problems[1:]}
    with pytest.raises(ValueError, match=problems[0].id):
        score_rollouts(rollouts, known)
