"""Problem/Score types and the reply-parsing helpers shared by every task family.

Rewards are binary (1.0 correct, 0.0 otherwise); the feedback strings are written for a
reflective prompt optimiser (GEPA), so they say what was expected, what the reply gave and
what went wrong, in one or two sentences.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Protocol

# A miss streak this long while drawing means the family's problem space is exhausted.
DRAW_PATIENCE = 1000
EXCERPT_CHARS = 60


@dataclass(frozen=True)
class Problem:
    id: str  # "<task>-<8 hex>" hashed from task and question, unless user data gives one
    task: str
    question: str  # the user turn, answer-format instruction included
    answer: str
    meta: dict  # JSON-serialisable extras (code, facts, operands, user "scoring", ...)


@dataclass(frozen=True)
class Score:
    reward: float  # 1.0 correct, else 0.0
    components: dict[str, float]  # always "correct" and "parsed"
    feedback: str  # expected vs given vs what went wrong, for the prompt optimiser


class Task(Protocol):
    name: str
    # What the family asks and how a reply is scored, in a sentence or two, with no problem in it: all
    # a proposal written without rollouts knows of the task (fast.proposer blind).
    description: str

    def generate(
        self, rng: random.Random, n: int, exclude: Collection[str] = frozenset()
    ) -> list[Problem]:
        """n problems with distinct questions, none of whose question is in `exclude`."""
        ...

    def score(self, problem: Problem, reply: str) -> Score: ...


class DatasetTask(Protocol):
    """A family read from a published dataset (a local file or a hub snapshot, fst.tasks.sources) in
    that dataset's own column layout, instead of generated."""

    name: str
    description: str  # as Task.description
    columns: tuple[str, ...]  # columns every source row must have (checked before any job)

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        """The problems of one source row (one, or several for a row with several cases). `where` names
        the file and row for errors (ValueError(f"{where}: ...") naming the column and the fix);
        `options` is the dataset's block of the config (datasets.<name>)."""
        ...

    def score(self, problem: Problem, reply: str) -> Score: ...


# Hex digits of a published dataset's problem ids: 8 (32 bits) would give distinct questions of a
# 53K-row set the same id about one time in three.
DATASET_ID_HEX = 16


def make_id(task: str, question: str, hex_digits: int = 8) -> str:
    digest = hashlib.sha256(f"{task}\n{question}".encode()).hexdigest()
    return f"{task}-{digest[:hex_digits]}"


def make_problem(task: str, question: str, answer: str, meta: dict, hex_digits: int = 8) -> Problem:
    return Problem(make_id(task, question, hex_digits), task, question, answer, meta)


def make_score(correct: bool, parsed: bool, feedback: str) -> Score:
    value = 1.0 if correct else 0.0
    return Score(value, {"correct": value, "parsed": 1.0 if parsed else 0.0}, feedback)


def draw_distinct(
    task: str, n: int, exclude: Collection[str], draw: Callable[[int], Problem]
) -> list[Problem]:
    """Call draw(slot) until n problems with new questions are collected.

    Raises ValueError once DRAW_PATIENCE draws in a row gave only already-seen questions.
    """
    if n < 0:
        raise ValueError(f"cannot generate a negative number of problems ({n})")
    seen = set(exclude)
    problems: list[Problem] = []
    misses = 0
    while len(problems) < n:
        problem = draw(len(problems))
        if problem.question in seen:
            misses += 1
            if misses >= DRAW_PATIENCE:
                raise ValueError(
                    f"task {task!r} ran out of distinct problems: found {len(problems)} of the "
                    f"{n} requested (besides {len(exclude)} excluded); ask for fewer"
                )
            continue
        misses = 0
        seen.add(problem.question)
        problems.append(problem)
    return problems


# --- published datasets' rows ----------------------------------------------------------------


def row_text(row: dict, column: str, where: str, kind: str = "a non-empty string") -> str:
    """A required non-empty text column of a published dataset's row, stripped."""
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{where}: column "{column}" must be {kind}, got {value!r}; fix or drop the row')
    return value.strip()


# --- numbers ---------------------------------------------------------------------------------

# A minus sign counts only when it is not a hyphen between words/numbers ("5-3" is 5 and 3).
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def find_numbers(text: str) -> list[float]:
    """All numbers in text, in order; "1,000" is 1000 and "-3" is negative."""
    return [float(m.group().replace(",", "")) for m in _NUMBER.finditer(text)]


def parse_number(text: str) -> float | None:
    """The number that text consists of (surrounding spaces and a full stop allowed), else None."""
    match = _NUMBER.fullmatch(text.strip().rstrip("."))
    return float(match.group().replace(",", "")) if match else None


def format_number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def same_number(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# --- free-text replies -----------------------------------------------------------------------

THINK_END = "</think>"  # where the reasoning of Qwen3 (and DeepSeek-R1 style models) ends


def after_thinking(reply: str) -> str:
    """The reply after its last </think>: a reasoning model's answer; the whole reply without one."""
    _, mark, answer = reply.rpartition(THINK_END)
    return answer if mark else reply


_TERMINAL = set(".!?)]}\"'`*")


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """The end of text on one line (replies are judged by how they end)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else "..." + flat[3 - limit :]


def looks_cut_off(reply: str) -> bool:
    """A longish reply ending mid-sentence was probably stopped by the token limit."""
    text = reply.rstrip()
    return len(text.split()) >= 5 and text[-1] not in _TERMINAL and not text[-1].isdigit()


def _restates(reply: str, question: str) -> bool:
    words = re.findall(r"\w+", reply.lower())
    known = set(re.findall(r"\w+", question.lower()))
    return len(words) >= 3 and sum(w in known for w in words) >= 0.8 * len(words)


def describe_missing(reply: str, question: str) -> str:
    """Why a reply held no usable answer, as a short clause for the feedback."""
    if not reply.strip():
        return "it was empty"
    if _restates(reply, question):
        return "it only restated the question"
    if looks_cut_off(reply):
        return "it was cut off mid-sentence"
    return f'it gave only prose: "{excerpt(reply)}"'


# --- final values (CodeIO-style answers) -----------------------------------------------------

_ANSWER_MARK = re.compile(r"\banswer\s*(?::|=|is\b)", re.IGNORECASE)
_RETURN_MARK = re.compile(r"\b(?:returns?|is)\b|=>|->|→|(?<![=!<>])=(?!=)", re.IGNORECASE)
_NOT_LITERAL = object()


def literal(text: str) -> object:
    """ast.literal_eval(text), or _NOT_LITERAL when text is not a Python literal."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOT_LITERAL


def is_literal(value: object) -> bool:
    return value is not _NOT_LITERAL


_JSON_NAMES = {"true": True, "false": False, "null": None}


def parse_value(text: str) -> object:
    """text as JSON or as a Python literal, JSON's true/false/null allowed inside a Python literal
    (models mix the two). Raises ValueError with a short reason when it is neither."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        pass
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"{err.msg} (column {err.offset})") from None
    except (ValueError, RecursionError, MemoryError):
        raise ValueError("it cannot be parsed") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id not in _JSON_NAMES:
            raise ValueError(f"`{node.id}` is a bare name, not a value (strings and keys need quotes)")
        if not isinstance(node, _LITERAL_NODES):
            raise ValueError(f"`{excerpt(ast.unparse(node))}` is an expression, not a value")
    try:
        return ast.literal_eval(_JsonNames().visit(tree).body)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise ValueError("it is not a literal (a string, number, list, dict, true/false/null)") from None


_LITERAL_NODES = (
    ast.Expression, ast.Constant, ast.Name, ast.Load, ast.List, ast.Tuple, ast.Dict, ast.Set,
    ast.UnaryOp, ast.USub, ast.UAdd,
)  # fmt: skip


class _JsonNames(ast.NodeTransformer):
    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)


def _trim(text: str) -> str:
    text = text.strip().strip("`*").strip()
    if text.endswith(".") and not is_literal(literal(text)):
        text = text[:-1].rstrip()
    return text


def final_answer(reply: str) -> str:
    """The value a reply ends on: the text after the last "Answer:" if any, else its last line,
    without code fences, backticks or a trailing full stop; a last line that is not a value is
    cut after its last "returns", "is", "=" or arrow ("f(3) returns 5." gives "5")."""
    lines = [ln for ln in reply.splitlines() if not ln.strip().startswith("```")]
    text = "\n".join(lines)
    marks = list(_ANSWER_MARK.finditer(text))
    if marks:
        text = text[marks[-1].end() :]
    nonblank = [ln for ln in text.splitlines() if ln.strip()]
    last = _trim(nonblank[-1]) if nonblank else ""
    if not is_literal(literal(last)):
        marks = list(_RETURN_MARK.finditer(last))
        if marks:
            last = _trim(last[marks[-1].end() :])
    return last


def _unquote(text: str) -> str:
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def same_value(a: object, b: object) -> bool:
    """Python values equal, numbers compared numerically, bools never equal to numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return same_number(float(a), float(b))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_value, a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[key], b[key]) for key in a)
    return a == b


def values_match(candidate: str, reference: str) -> bool:
    """Compare as Python literals when both parse, else as text; quotes around strings optional."""
    got, want = literal(candidate), literal(reference)
    if is_literal(got) and is_literal(want) and same_value(got, want):
        return True
    return _unquote(candidate) == _unquote(reference)


def looks_like_value(text: str) -> bool:
    """A literal or a single bare token, as opposed to a sentence."""
    return bool(text) and (is_literal(literal(text)) or len(text.split()) == 1)


def type_name(value: object) -> str:
    """Python type name, with int and float both called "number"."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "number"
    return type(value).__name__


# --- labels ----------------------------------------------------------------------------------


def first_label(text: str, synonyms: dict[str, str]) -> str | None:
    """The canonical label of the first synonym (a whole word or phrase) in text, any case."""
    alternatives = sorted(synonyms, key=len, reverse=True)  # "not supported" before "supported"
    pattern = r"\b(" + "|".join(re.escape(word) for word in alternatives) + r")\b"
    match = re.search(pattern, text, re.IGNORECASE)
    return synonyms[" ".join(match.group(1).lower().split())] if match else None


# --- shared scorers --------------------------------------------------------------------------


def label_score(
    problem: Problem, reply: str, synonyms: dict[str, str], choices: str, explain: Callable[[], str]
) -> Score:
    """Correct when the reply's first label word (see first_label) is the answer; `choices` names the
    labels ("SUPPORTED or REFUTED"), explain() why the answer is right when the reply chose another."""
    label = problem.answer
    got = first_label(reply, synonyms)
    if got is None:
        why = describe_missing(reply, problem.question)
        return make_score(
            False, False, f"Expected one word, {choices} (here {label}); the reply had neither ({why})."
        )
    if got == label:
        return make_score(True, True, f"Correct: the reply answered {label}.")
    return make_score(False, True, f"Expected {label}: {explain()}. The reply answered {got}.")


def numeric_score(
    problem: Problem, reply: str, explain: Callable[[float], str] | None = None
) -> Score:
    """Correct when the reply's last number equals the answer; explain(got) names the mistake."""
    want = parse_number(problem.answer)
    if want is None:
        raise ValueError(f"problem {problem.id}: answer {problem.answer!r} is not a number")
    shown = format_number(want)
    numbers = find_numbers(reply)
    if not numbers:
        why = describe_missing(reply, problem.question)
        return make_score(False, False, f"Expected the number {shown}; the reply had none ({why}).")
    got = numbers[-1]
    if same_number(got, want):
        return make_score(True, True, f"Correct: the reply's final number was {shown}.")
    if any(same_number(number, want) for number in numbers[:-1]):
        why = f"{shown} appeared earlier, but the reply went on and ended on another number"
    elif looks_cut_off(reply):
        why = "the reply was cut off before it reached its answer"
    else:
        why = explain(got) if explain else "wrong value"
    feedback = f"Expected {shown}. The reply's final number was {format_number(got)}: {why}."
    return make_score(False, True, feedback)


def exact_score(problem: Problem, reply: str) -> Score:
    """Correct when the reply's final value equals the answer (see final_answer/values_match)."""
    want, got = problem.answer, final_answer(reply)
    if values_match(got, want):
        return make_score(True, True, f"Correct: the reply gave {want}.")
    if not looks_like_value(got):
        why = describe_missing(reply, problem.question)
        return make_score(
            False, False, f"Expected {want}; the reply ended without a value ({why})."
        )
    got_value, want_value = literal(got), literal(want)
    got_kind, want_kind = type_name(got_value), type_name(want_value)
    if is_literal(got_value) and is_literal(want_value) and got_kind != want_kind:
        why = f"wrong type, {got_kind} instead of {want_kind}"
    elif looks_cut_off(reply):
        why = "the reply was cut off before it reached its answer"
    else:
        why = "wrong value"
    return make_score(False, True, f"Expected {want}. The reply gave {excerpt(got)}: {why}.")
