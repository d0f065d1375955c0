"""Offline task families (toy math, CodeIO and HoVer-like claims) and user-supplied data.

Splits and their DataFrame form live in fst.tasks.splits (it imports pandas).
"""

from __future__ import annotations

from .arithmetic import ArithmeticTask
from .base import Problem, Score, Task
from .claims import ClaimsTask
from .code_output import CodeOutputTask
from .user_data import DEFAULT_SCORING, load_user_problems, score_user
from .user_data import description as user_description

_TASKS: dict[str, Task] = {
    task.name: task for task in (ArithmeticTask(), CodeOutputTask(), ClaimsTask())
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)

__all__ = [
    "TASK_NAMES",
    "Problem",
    "Score",
    "Task",
    "describe_task",
    "get_task",
    "load_user_problems",
    "score_reply",
]


def get_task(name: str) -> Task:
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASK_NAMES)}") from None


def score_reply(problem: Problem, reply: str) -> Score:
    """Score with the problem's family, or for user data by its meta["scoring"] rule."""
    if problem.task in _TASKS:
        return _TASKS[problem.task].score(problem, reply)
    if problem.task.startswith("user") or "scoring" in problem.meta:
        return score_user(problem, reply)
    raise ValueError(
        f"problem {problem.id}: task {problem.task!r} is neither one of {', '.join(TASK_NAMES)} "
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
        if family in _TASKS:
            parts.append(_TASKS[family].description)
        else:
            rules = {p.meta.get("scoring", DEFAULT_SCORING) for p in problems if p.task == family}
            parts.append(user_description(rules))
    return "\n".join(parts)
