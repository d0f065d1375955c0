"""Task stage: the problems of one task family (or of the user's file), split into train/val/test."""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from fst.tasks import Problem, load_user_problems
from fst.tasks.splits import frame_to_problems, make_splits, problems_to_frame

SPLITS = ("train", "val", "test")


def split_user_problems(problems: list[Problem], seed: int, sizes: dict[str, int], source: str):
    """Shuffle the user's problems with `seed` and cut val, test, then train (train takes the rest)."""
    held_out = sizes["val"] + sizes["test"]
    if len(problems) <= held_out:
        raise ValueError(
            f"{source}: {len(problems)} problems, but tasks.sizes.val + tasks.sizes.test = {held_out} "
            f"leaves none for training; lower those sizes or add problems"
        )
    order = list(problems)
    random.Random(seed).shuffle(order)
    val, test = order[: sizes["val"]], order[sizes["val"] : held_out]
    train = order[held_out : held_out + sizes["train"]]
    return {"train": train, "val": val, "test": test}


def build_task_data(task: str, seed: int, sizes: dict[str, int], data_file: str | None) -> pd.DataFrame:
    """`task` is a family name, or with `data_file` set the name its problems get ("user", "user_<n>")."""
    if data_file:
        splits = split_user_problems(load_user_problems(data_file, task), seed, sizes, data_file)
    else:
        splits = make_splits(task, seed, sizes)
    return problems_to_frame(splits)


def build_dataset_data(family: str, seed: int, sizes: dict[str, int], spec: dict):
    """A published dataset's problems, read once from its source (datasets.<family>) and split like a
    user's file. Returns the frame, the source record and counts for provenance: rows, the problems they
    made (a CodeI/O row makes up to cases_per_row, one without cases none, a HoVer claim under min_hops
    none) and the repeated questions dropped (one met twice could otherwise sit in train and test)."""
    from fst.tasks import get_dataset
    from fst.tasks.sources import describe, load_rows

    family_task = get_dataset(family)
    rows, record = load_rows(family, spec, family_task.columns)
    made = [problem for where, row in rows for problem in family_task.problems(row, where, spec)]
    first: dict[str, Problem] = {}
    for problem in made:
        first.setdefault(problem.question, problem)
    unique = list(first.values())
    if len({problem.id for problem in unique}) < len(unique):  # 64-bit ids: not expected at any size
        raise ValueError(f"{describe(spec)}: two different questions hashed to one problem id")
    splits = split_user_problems(unique, seed, sizes, describe(spec))
    counts = {
        "source_rows": record.rows,
        "problems_made": len(made),
        "repeated_questions_dropped": len(made) - len(unique),
    }
    return problems_to_frame(splits), record, counts


def load_split(path: Path, split: str) -> list[Problem]:
    frame = pd.read_parquet(path)
    return frame_to_problems(frame[frame["split"] == split])


def round_problems(train: list[Problem], seed: int, round_index: int, count: int) -> list[Problem]:
    """The problems of one round: a seeded pass over the training set, reshuffled each epoch.

    Depends only on (seed, round), not on the arm, so every arm sees the same data order.
    """
    picked: list[Problem] = []
    position = round_index * count
    while len(picked) < count:
        epoch, offset = divmod(position, len(train))
        order = list(train)
        random.Random(f"{seed}-{epoch}").shuffle(order)
        take = order[offset : offset + count - len(picked)]
        picked.extend(take)
        position += len(take)
    return picked
