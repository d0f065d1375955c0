"""Loading and scoring user-supplied problems (JSONL / Parquet)."""

import json

import pandas as pd
import pytest

from fst.tasks import load_user_problems, score_reply
from fst.tasks.base import make_id


def write_jsonl(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines))
    return path


def test_jsonl_happy_path(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"question": "What is 6 x 7?", "answer": 42, "scoring": "numeric", "id": "q1"},
            "",
            {"question": "Capital of France?", "answer": "Paris", "meta": {"source": "quiz"}},
            {"question": "Is the sky blue?", "answer": "yes", "scoring": "label"},
        ],
    )
    first, second, third = load_user_problems(path)
    assert (first.id, first.task, first.answer, first.meta) == (
        "q1",
        "user",
        "42",
        {"scoring": "numeric"},
    )
    assert second.id == make_id("user", "Capital of France?")
    assert second.meta == {"source": "quiz", "scoring": "exact"}
    assert third.meta["scoring"] == "label"
    assert [p.task for p in load_user_problems(str(path), name="quiz")] == ["quiz"] * 3


def test_parquet_happy_path(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame(
        {
            "question": ["2 + 2?", "Spell cat backwards."],
            "answer": ["4", "tac"],
            "id": [None, "rev"],
            "scoring": ["numeric", None],
            "meta": ['{"level": 1}', None],
        }
    ).to_parquet(path)
    first, second = load_user_problems(path)
    assert first.id == make_id("user", "2 + 2?")
    assert first.meta == {"level": 1, "scoring": "numeric"}
    assert (second.id, second.answer, second.meta) == ("rev", "tac", {"scoring": "exact"})


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [{"question": "a", "answer": "1"}, "", "", {"question": "b"}],
            'data.jsonl line 4: field "answer" is missing; every row needs "question" and "answer"',
        ),
        ([{"answer": "1"}], 'line 1: field "question" is missing'),
        ([{"question": "a", "answer": "1"}, "{not json"], "line 2: invalid JSON"),
        ([["a", "1"]], "line 1: expected an object"),
        ([{"question": "", "answer": "1"}], 'line 1: field "question" must be a non-empty string'),
        (
            [{"question": "a", "answer": True}],
            'field "answer" must be a non-empty string or a number',
        ),
        ([{"question": "a", "answer": "1", "scoring": "fuzzy"}], 'use one of "numeric", "exact"'),
        ([{"question": "a", "answer": "ten", "scoring": "numeric"}], "needs a number"),
        ([{"question": "a", "answer": "very big", "scoring": "label"}], "needs a single word"),
        ([{"question": "a", "answer": "1", "meta": [1]}], 'field "meta" must be a JSON object'),
        ([{"question": "a", "answer": "1", "id": 7}], 'field "id" must be a non-empty string'),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, message):
    path = write_jsonl(tmp_path / "data.jsonl", lines)
    with pytest.raises(ValueError) as err:
        load_user_problems(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_malformed_parquet_names_the_row(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"question": ["a", None], "answer": ["1", "2"]}).to_parquet(path)
    with pytest.raises(ValueError, match=r'data\.parquet row 2: field "question" is missing'):
        load_user_problems(path)


def test_unreadable_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_text("not parquet")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        load_user_problems(path)


def test_bad_suffix(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("question,answer\n")
    with pytest.raises(ValueError, match=r"data\.csv: unsupported file type; use one of \.jsonl"):
        load_user_problems(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        load_user_problems(tmp_path / "nowhere.jsonl")


def test_builtin_name_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "a", "answer": "1"}])
    with pytest.raises(ValueError, match="built-in task family"):
        load_user_problems(path, name="arithmetic")


@pytest.mark.parametrize(
    "rows",
    [
        [
            {"question": "a", "answer": "1", "id": "x"},
            "",
            {"question": "b", "answer": "2", "id": "x"},
        ],
        [{"question": "a", "answer": "1"}, "", {"question": "a", "answer": "1"}],
    ],
)
def test_duplicate_ids_name_both_lines(tmp_path, rows):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(ValueError, match="line 3: id .* was already used on line 1"):
        load_user_problems(path)


@pytest.fixture
def scored(tmp_path):
    path = write_jsonl(
        tmp_path / "data.jsonl",
        [
            {"question": "How many?", "answer": "1000", "scoring": "numeric"},
            {"question": "Reverse 'ab'.", "answer": "ba"},
            {"question": "Is it raining?", "answer": "No", "scoring": "label"},
        ],
    )
    return dict(zip(("numeric", "exact", "label"), load_user_problems(path), strict=True))


@pytest.mark.parametrize(
    ("scoring", "reply", "correct", "parsed", "says"),
    [
        ("numeric", "I count 1,000 of them.", True, True, "Correct"),
        ("numeric", "999", False, True, "Expected 1000. The reply's final number was 999"),
        ("numeric", "Many.", False, False, "the reply had none"),
        ("exact", "Answer: 'ba'", True, True, "Correct"),
        ("exact", "ab", False, True, "Expected ba. The reply gave ab"),
        ("label", "no.", True, True, "Correct"),
        ("label", "**No**, it is dry.", True, True, "Correct"),
        ("label", "Yes", False, True, "It began with 'yes'"),
        ("label", "", False, False, "empty"),
    ],
)
def test_user_scoring(scored, scoring, reply, correct, parsed, says):
    score = score_reply(scored[scoring], reply)
    assert score.components == {"correct": float(correct), "parsed": float(parsed)}
    assert says in score.feedback
