"""Offline task families (toy math, CodeIO and HoVer-like claims) and user-supplied data.

Splits and their DataFrame form live in fst.tasks.splits (it imports pandas).
"""

from __future__ import annotations

from .arithmetic import ArithmeticTask
from .base import Problem, Score, Task
from .claims import ClaimsTask
from .code_output import CodeOutputTask
from .user_data import load_user_problems, score_user

_TASKS: dict[str, Task] = {
    task.name: task for task in (ArithmeticTask(), CodeOutputTask(), ClaimsTask())
}
TASK_NAMES: tuple[str, ...] = tuple(_TASKS)

__all__ = [
    "TASK_NAMES",
    "Problem",
    "Score",
    "Task",
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
