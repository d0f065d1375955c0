"""Problems from a user's own JSONL or Parquet file (format: docs/data-format.md)."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator
from pathlib import Path

from .base import (
    Problem,
    Score,
    describe_missing,
    exact_score,
    make_id,
    make_score,
    numeric_score,
    parse_number,
)
from .sources import read_rows

SUFFIXES = (".jsonl", ".parquet")
SCORINGS = ("numeric", "exact", "label")
DEFAULT_SCORING = "exact"
# How each scoring rule judges a reply, for the description of a user's data set (see `description`).
SCORING_RULES = {
    "numeric": "its last number equals the reference answer",
    "exact": "the last value it gives equals the reference answer",
    "label": "its first word is the reference label",
}
_WORD = re.compile(r"\w+(?:['-]\w+)*")


def load_user_problems(path: str | Path, name: str = "user") -> list[Problem]:
    """Read and validate every row; the first bad row raises ValueError naming file and line."""
    from . import FAMILY_NAMES  # late: the package imports this module

    if name in FAMILY_NAMES:
        raise ValueError(f"user data cannot be named {name!r}: that is a built-in task family")
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type; use one of {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FileNotFoundError(f"user data file not found: {path}")
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}
    for where, row in _rows(path):
        problem = _to_problem(row, where, name)
        if problem.id in first_seen:
            raise ValueError(
                f"{where}: id {problem.id!r} was already used on {first_seen[problem.id]}; "
                "ids must be unique (a row without an id gets one from its question, "
                "so a repeated question clashes too)"
            )
        first_seen[problem.id] = where.removeprefix(f"{path} ")
        problems.append(problem)
    return problems


def _rows(path: Path) -> Iterator[tuple[str, object]]:
    """The file's rows as a published dataset's are read (sources.read_rows), with an unreadable
    Parquet file named as such."""
    import pyarrow as pa

    try:
        yield from read_rows(path)
    except pa.ArrowException as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None


def description(scorings: Collection[str]) -> str:
    """What a user's data set asks, as far as the fast stage may know it without its problems: that it
    is the user's own questions, and how its scoring rules (`meta["scoring"]`) judge a reply."""
    rules = " or ".join(SCORING_RULES[s] for s in SCORINGS if s in set(scorings))
    return f"Questions from the user's own data set. A reply is correct when {rules}."


def _to_problem(row: object, where: str, name: str) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(
            f'{where}: expected an object like {{"question": ..., "answer": ...}}, '
            f"got {type(row).__name__}"
        )
    question = _required_text(row, "question", where)
    answer = _required_text(row, "answer", where)
    meta = _meta(row, where)
    scoring = row.get("scoring") or meta.get("scoring") or DEFAULT_SCORING
    _check_scoring(scoring, answer, where)
    problem_id = row.get("id")
    if problem_id is None:
        problem_id = make_id(name, question)
    elif not isinstance(problem_id, str) or not problem_id.strip():
        raise ValueError(f'{where}: field "id" must be a non-empty string, got {problem_id!r}')
    return Problem(problem_id, name, question, answer, {**meta, "scoring": scoring})


def _required_text(row: dict, field: str, where: str) -> str:
    value = row.get(field)
    if value is None:
        raise ValueError(
            f'{where}: field "{field}" is missing; every row needs "question" and "answer"'
        )
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if field == "answer" and numeric:
        return str(value)
    if not isinstance(value, str) or not value.strip():
        kind = "a non-empty string or a number" if field == "answer" else "a non-empty string"
        raise ValueError(f'{where}: field "{field}" must be {kind}, got {value!r}')
    return value


def _meta(row: dict, where: str) -> dict:
    """The optional "meta" object; Parquet files may hold it as a JSON string."""
    meta = row.get("meta")
    if meta is None:
        return {}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    if not isinstance(meta, dict):
        raise ValueError(f'{where}: field "meta" must be a JSON object (or leave it out)')
    return meta


def _check_scoring(scoring: object, answer: str, where: str) -> None:
    if scoring not in SCORINGS:
        choices = ", ".join(f'"{s}"' for s in SCORINGS)
        raise ValueError(
            f'{where}: field "scoring" is {scoring!r}; use one of {choices} '
            f'(or leave it out for "{DEFAULT_SCORING}")'
        )
    if scoring == "numeric" and parse_number(answer) is None:
        raise ValueError(
            f'{where}: field "answer" is {answer!r}, but scoring "numeric" needs a number'
        )
    if scoring == "label" and not _WORD.fullmatch(answer.strip()):
        raise ValueError(
            f'{where}: field "answer" is {answer!r}, but scoring "label" needs a single word'
        )


def _first_word(text: str) -> str | None:
    match = _WORD.search(text)
    return match.group().lower() if match else None


def label_score(problem: Problem, reply: str) -> Score:
    """Correct when the reply's first word is the answer (any case, punctuation ignored)."""
    want, got = problem.answer.strip(), _first_word(reply)
    if got is None:
        why = describe_missing(reply, problem.question)
        return make_score(False, False, f"Expected the word {want}; the reply had none ({why}).")
    if got == want.lower():
        return make_score(True, True, f"Correct: the reply began with {want}.")
    return make_score(
        False, True, f"Expected the reply to begin with {want}. It began with {got!r} instead."
    )


SCORERS = {"numeric": numeric_score, "exact": exact_score, "label": label_score}


def score_user(problem: Problem, reply: str) -> Score:
    """Score a user-data problem by the rule named in its meta["scoring"]."""
    scoring = problem.meta.get("scoring", DEFAULT_SCORING)
    if scoring not in SCORERS:
        raise ValueError(
            f"problem {problem.id}: unknown scoring {scoring!r}; use one of {SCORINGS}"
        )
    return SCORERS[scoring](problem, reply)
