"""Deterministic, disjoint train/val/test splits and their DataFrame (Parquet) form."""

from __future__ import annotations

import json
import random

import pandas as pd

from . import get_task
from .base import Problem

COLUMNS = ["id", "task", "split", "question", "answer", "meta"]


def make_splits(task: str, seed: int, sizes: dict[str, int]) -> dict[str, list[Problem]]:
    """Draw the splits in the order of `sizes`, each from its own seeded generator, each
    excluding the questions of the splits before it.

    So a split depends only on (task, seed, its own size and the splits before it): growing
    "test" leaves "train" and "val" unchanged. Claims keep their label balance per split.
    """
    family = get_task(task)
    for split, size in sizes.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError(f"split {split!r}: size must be a non-negative integer, got {size!r}")
    taken: set[str] = set()
    splits: dict[str, list[Problem]] = {}
    for split, size in sizes.items():
        rng = random.Random(f"{task}:{seed}:{split}")
        splits[split] = family.generate(rng, size, exclude=taken)
        taken.update(problem.question for problem in splits[split])
    return splits


def problems_to_frame(splits: dict[str, list[Problem]]) -> pd.DataFrame:
    rows = [
        [p.id, p.task, split, p.question, p.answer, json.dumps(p.meta, sort_keys=True)]
        for split, problems in splits.items()
        for p in problems
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def frame_to_problems(df: pd.DataFrame) -> list[Problem]:
    """Inverse of problems_to_frame, in row order (the split column is left to the caller)."""
    missing = [c for c in COLUMNS if c != "split" and c not in df.columns]
    if missing:
        raise ValueError(f"problem frame lacks column(s) {missing}; expected {COLUMNS}")
    return [
        Problem(
            str(row["id"]),
            str(row["task"]),
            str(row["question"]),
            str(row["answer"]),
            _meta(row["meta"]),
        )
        for row in df.to_dict("records")
    ]


def _meta(value: object) -> dict:
    if isinstance(value, dict):
        return value
    return json.loads(value) if isinstance(value, str) and value else {}
