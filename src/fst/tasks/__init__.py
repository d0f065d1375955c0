"""Task families: generated offline ones (toy math, CodeIO and HoVer-like claims), published datasets read
from their sources (CodeI/O, Polaris math, HoVer, physics: fst.tasks.sources), and user-supplied data.

Splits and their DataFrame form live in fst.tasks.splits (it imports pandas).
"""

from __future__ import annotations

from .arithmetic import ArithmeticTask
from .base import DatasetTask, Problem, Score, Task, after_thinking
from .claims import ClaimsTask
from .code_output import CodeOutputTask
from .codeio import CodeIOTask
from .hover import HoverTask
from .physics import PhysicsTask
from .polaris import PolarisTask
from .user_data import DEFAULT_SCORING, load_user_problems, score_user
from .user_data import description as user_description

_TASKS: dict[str, Task] = {
    task.name: task for task in (ArithmeticTask(), CodeOutputTask(), ClaimsTask())
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)  # generated
_DATASETS: dict[str, DatasetTask] = {
    task.name: task for task in (CodeIOTask(), PolarisTask(), HoverTask(), PhysicsTask())
}
DATASET_NAMES: tuple[str, ...] = tuple(_DATASETS)  # read from datasets.<name> of the config
FAMILY_NAMES: tuple[str, ...] = TASK_NAMES + DATASET_NAMES

__all__ = [
    "DATASET_NAMES",
    "FAMILY_NAMES",
    "TASK_NAMES",
    "Problem",
    "Score",
    "Task",
    "describe_task",
    "get_dataset",
    "get_task",
    "load_user_problems",
    "score_reply",
]


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}") from None


def get_dataset(name: str) -> DatasetTask:
    try:
        return _DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}") from None


def _family(name: str) -> Task | DatasetTask | None:
    return _TASKS.get(name) or _DATASETS.get(name)


def score_reply(problem: Problem, reply: str) -> Score:
    """Score with the problem's family, or for user data by its meta["scoring"] rule: the part of the
    reply after a reasoning model's thinking (after_thinking), so that no word thought on the way is
    taken for the answer."""
    reply = after_thinking(reply)
    if family := _family(problem.task):
        return family.score(problem, reply)
    if problem.task.startswith("user") or "scoring" in problem.meta:
        return score_user(problem, reply)
    raise ValueError(
        f"problem {problem.id}: task {problem.task!r} is neither one of {', '.join(FAMILY_NAMES)} "
        'nor user data (which carries meta["scoring"])'
    )


def describe_task(problems: list[Problem]) -> str:
    """What the problems' task family asks and how a reply is scored, without any of the problems.

    A built-in family's `description`; for user data, one built from the scoring rules the problems use.
    """
    families = sorted({p.task for p in problems})
    if not families:
        raise ValueError("no problems to describe the task of")
    parts = []
    for family in families:
        if known := _family(family):
            parts.append(known.description)
        else:
            rules = {p.meta.get("scoring", DEFAULT_SCORING) for p in problems if p.task == family}
            parts.append(user_description(rules))
    return "\n".join(parts)
