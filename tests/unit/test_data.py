"""Task data: the split table, user-data splits, and the per-round order of training problems."""

from __future__ import annotations

import inspect
import json
from collections import Counter

import pandas as pd
import pytest

from fst.artifacts import write_parquet
from fst.data import SPLITS, build_task_data, load_split, round_problems, split_user_problems
from fst.tasks import Problem
from fst.tasks.splits import COLUMNS


def _problems(n: int, task: str = "user") -> list[Problem]:
    return [Problem(f"p{i}", task, f"question {i}?", str(i), {"scoring": "numeric"}) for i in range(n)]


TRAIN = _problems(10)


def _ids(problems: list[Problem]) -> list[str]:
    return [p.id for p in problems]


# --- round_problems -----------------------------------------------------------------------------


def test_round_problems_takes_no_arm():
    assert list(inspect.signature(round_problems).parameters) == ["train", "seed", "round_index", "count"]


def test_round_problems_is_deterministic():
    for r in range(5):
        assert round_problems(TRAIN, 3, r, 4) == round_problems(list(TRAIN), 3, r, 4)
        assert len(round_problems(TRAIN, 3, r, 4)) == 4


def test_rounds_are_consecutive_slices_of_one_stream():
    stream = _ids(round_problems(TRAIN, 7, 0, 60))
    for count in (1, 3, 4, 7, 10):
        for r in range(5):
            assert _ids(round_problems(TRAIN, 7, r, count)) == stream[r * count : (r + 1) * count]


def test_each_epoch_covers_the_training_set_once():
    stream = _ids(round_problems(TRAIN, 0, 0, 50))
    epochs = [stream[i : i + 10] for i in range(0, 50, 10)]
    for epoch in epochs:
        assert sorted(epoch) == sorted(_ids(TRAIN))
    assert len({tuple(e) for e in epochs}) > 1, "each epoch must be reshuffled"
    assert epochs[0] != _ids(TRAIN), "the first epoch is shuffled too"


def test_round_spanning_an_epoch_boundary():
    # count 3 over 10 problems: round 3 takes the last of epoch 0 and the first two of epoch 1
    rounds = [_ids(round_problems(TRAIN, 1, r, 3)) for r in range(4)]
    first_epoch = [pid for ids in rounds[:3] for pid in ids] + rounds[3][:1]
    assert sorted(first_epoch) == sorted(_ids(TRAIN))


def test_count_larger_than_the_training_set():
    picked = _ids(round_problems(TRAIN, 2, 0, 25))
    assert len(picked) == 25
    assert set(Counter(picked).values()) <= {2, 3}
    assert sorted(picked[:10]) == sorted(picked[10:20]) == sorted(_ids(TRAIN))


def test_seed_changes_the_order():
    assert _ids(round_problems(TRAIN, 0, 0, 10)) != _ids(round_problems(TRAIN, 1, 0, 10))


# --- split_user_problems ------------------------------------------------------------------------


def test_user_split_sizes_and_disjointness():
    problems = _problems(30)
    splits = split_user_problems(problems, 0, {"train": 100, "val": 5, "test": 7}, "mine.jsonl")
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "val": 5, "test": 7}
    ids = [pid for split in splits.values() for pid in _ids(split)]
    assert sorted(ids) == sorted(_ids(problems))
    capped = split_user_problems(problems, 0, {"train": 4, "val": 5, "test": 7}, "mine.jsonl")
    assert len(capped["train"]) == 4
    assert capped["val"] == splits["val"] and capped["test"] == splits["test"]


def test_user_split_is_seeded():
    problems = _problems(30)
    sizes = {"train": 10, "val": 5, "test": 5}
    a = split_user_problems(problems, 0, sizes, "f")
    assert a == split_user_problems(problems, 0, sizes, "f")
    assert a != split_user_problems(problems, 1, sizes, "f")


@pytest.mark.parametrize("n", [0, 5, 12])
def test_user_split_with_nothing_left_for_training_names_the_source(n):
    with pytest.raises(ValueError) as info:
        split_user_problems(_problems(n), 0, {"train": 4, "val": 5, "test": 7}, "data/mine.jsonl")
    message = str(info.value)
    assert message.startswith("data/mine.jsonl:")
    assert f"{n} problems" in message and "12" in message
    assert "tasks.sizes.val" in message and "tasks.sizes.test" in message


# --- build_task_data / load_split ---------------------------------------------------------------


@pytest.mark.parametrize("task", ["arithmetic", "code_output", "claims"])
def test_build_task_data_for_a_family(task):
    sizes = {"train": 6, "val": 4, "test": 3}
    frame = build_task_data(task, 0, sizes, None)
    assert list(frame.columns) == COLUMNS
    assert frame["split"].value_counts().to_dict() == sizes
    assert set(frame["task"]) == {task}
    assert frame["id"].is_unique and frame["question"].is_unique
    pd.testing.assert_frame_equal(frame, build_task_data(task, 0, sizes, None))
    assert not frame.equals(build_task_data(task, 1, sizes, None))


def test_build_task_data_from_a_user_file(tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} + 1?", "answer": i + 1}) + "\n" for i in range(12))
    )
    frame = build_task_data("user", 0, {"train": 50, "val": 3, "test": 2}, str(data))
    assert frame["split"].value_counts().to_dict() == {"train": 7, "val": 3, "test": 2}
    assert set(frame["task"]) == {"user"}


def test_load_split_round_trip(tmp_path):
    sizes = {"train": 5, "val": 3, "test": 2}
    frame = build_task_data("arithmetic", 0, sizes, None)
    path = tmp_path / "arithmetic.parquet"
    write_parquet(frame, path)
    for split in SPLITS:
        problems = load_split(path, split)
        assert len(problems) == sizes[split]
        assert _ids(problems) == list(frame[frame["split"] == split]["id"])
        assert all(isinstance(p.meta, dict) for p in problems)
