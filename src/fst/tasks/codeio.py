"""CodeI/O output prediction (Li et al. 2025, arXiv 2502.07316) read from the raw CodeI/O release.

A row is one problem statement with reference code and several input/output cases; each case is a
problem. The outputs come with the data: dataset code is never executed.
"""

from __future__ import annotations

import contextlib
import json
import re

from .base import (
    Problem,
    Score,
    describe_missing,
    excerpt,
    final_answer,
    looks_cut_off,
    looks_like_value,
    make_problem,
    make_score,
    parse_value,
    same_value,
    type_name,
)

SHOWN_CHARS = 120
_JSON_FENCE = re.compile(r"```json\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def question_text(row: dict, case_input: object) -> str:
    """The authors' output-prediction prompt (query, I/O requirements, input, code tip), reworded."""
    return (
        "You are given a problem that takes some input variables and produces an output:\n\n"
        f"{row['query'].strip()}\n\n"
        f"The input and output requirements are:\n\n{row['io_req'].strip()}\n\n"
        f"The input (keyword arguments of `{row['funcname']}`) is:\n\n{to_json(case_input)}\n\n"
        "Tip: this reference Python code solves the problem. Use it to guide your reasoning, "
        f"but do not copy spans of it.\n\n```python\n{row['refcode'].strip()}\n```\n\n"
        "Predict the output without writing or running any code. Reason step by step, then give "
        'your final answer as a JSON object {"output": <your output>}, where <your output> '
        "strictly matches the output requirements."
    )


def to_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _shown(value: object) -> str:
    try:
        text = to_json(value)
    except (TypeError, ValueError):  # a set or tuple-keyed dict from a Python literal
        text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _jsonish(value: object) -> object:
    """Tuples as lists: the reference went through JSON, which has no tuples."""
    if isinstance(value, list | tuple):
        return [_jsonish(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonish(item) for key, item in value.items()}
    return value


def brace_objects(text: str) -> list[str]:
    """The outermost balanced {...} spans of text, in order. Braces inside quoted strings of a span do
    not count (quotes outside spans are prose apostrophes); a "{" never closed is skipped."""
    spans, depth, start, quote, escaped = [], 0, 0, "", False
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif depth and char in "\"'":
            quote = char
        elif char == "{":
            start = i if depth == 0 else start
            depth += 1
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                spans.append(text[start : i + 1])
        i += 1
        if i == len(text) and depth:  # unclosed: rescan after its opening brace
            i, depth, quote, escaped = start + 1, 0, "", False
    return spans


def reply_answer(reply: str) -> tuple[str | None, bool]:
    """The text of the reply's final answer and whether it is wrapped in {"output": ...}.

    In order: the last {...} object mentioning "output", else the last ```json block, else the value
    the reply ends on (base.final_answer) when it looks like one; (None, False) when there is none.
    """
    wrapped = [span for span in brace_objects(reply) if "output" in span.lower()]
    if wrapped:
        return wrapped[-1], True
    fences = _JSON_FENCE.findall(reply)
    if fences and fences[-1].strip():
        return fences[-1].strip(), False
    last = final_answer(reply)
    return (last, False) if looks_like_value(last) else (None, False)


class CodeIOTask:
    name = "codeio"
    description = (
        "Predicting code output (CodeI/O): a problem statement with its input/output requirements, one "
        "input, and reference Python code as a tip. A reply is correct when the value of its final JSON "
        'object {"output": ...} equals the reference output exactly (numbers compared numerically).'
    )
    columns = ("query", "io_req", "refcode", "funcname", "ios")

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        """The first `cases_per_row` cases of `ios` (repeated inputs skipped)."""
        for column in ("query", "io_req", "refcode", "funcname"):
            _require_text(row, column, where)
        limit = options["cases_per_row"]  # the schema's datasets.codeio.cases_per_row, at least 1
        problems: list[Problem] = []
        seen: set[str] = set()
        for index, case in enumerate(_cases(row, where)):
            if len(problems) == limit:
                break
            question = question_text(row, case["input"])
            if question in seen:
                continue
            seen.add(question)
            meta = {"funcname": row["funcname"], "input": to_json(case["input"]), "case": index}
            problems.append(make_problem(self.name, question, to_json(case["output"]), meta))
        return problems

    def score(self, problem: Problem, reply: str) -> Score:
        want = json.loads(problem.answer)
        shown = problem.answer
        text, wrapped = reply_answer(reply)
        if text is None:
            why = describe_missing(reply, problem.question)
            return make_score(
                False, False, f'Expected {{"output": {shown}}}; the reply gave no final answer ({why}).'
            )
        try:
            value = parse_value(text)
        except ValueError as err:
            return make_score(
                False,
                False,
                f'Expected {{"output": {shown}}}. The final answer `{excerpt(text)}` is not JSON or '
                f"a Python literal: {err}.",
            )
        if wrapped:
            if not isinstance(value, dict) or "output" not in value:
                return make_score(
                    False,
                    False,
                    f'Expected {{"output": {shown}}}. The final object `{excerpt(text)}` has no "output" '
                    'key; put the answer under "output".',
                )
            value = value["output"]
        got = _jsonish(value)
        if same_value(got, want):
            return make_score(True, True, f"Correct: the reply's output was {shown}.")
        why = _mistake(got, want, reply)
        return make_score(False, True, f"Expected output {shown}. The reply gave {_shown(got)}: {why}.")


def _mistake(got: object, want: object, reply: str) -> str:
    if isinstance(got, str) and not isinstance(want, str):
        try:
            if same_value(_jsonish(parse_value(got)), want):
                return f"right value, but quoted as a string; give the {type_name(want)} unquoted"
        except ValueError:
            pass
    if type_name(got) != type_name(want):
        return f"wrong type, {type_name(got)} instead of {type_name(want)}"
    if looks_cut_off(reply):
        return "the reply was cut off before it reached its answer"
    if isinstance(got, list) and len(got) != len(want):
        return f"wrong value, {len(got)} items instead of {len(want)}"
    if isinstance(got, dict) and got.keys() != want.keys():
        return f"wrong keys, {sorted(map(str, got))} instead of {sorted(want)}"
    return "wrong value"


def _require_text(row: dict, column: str, where: str) -> str:
    value = row.get(column)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(
            f'{where}: column "{column}" must be a non-empty string, got {excerpt(repr(value))}; '
            "rows need the raw CodeI/O layout (query, io_req, refcode, funcname, ios)"
        )
    return value


def _cases(row: dict, where: str) -> list[dict]:
    """`ios` as a list of {"input", "output"} cases; a JSON string holding that list is accepted too
    (how a Parquet snapshot may store mixed-type values)."""
    ios = row.get("ios")
    if isinstance(ios, str):
        with contextlib.suppress(json.JSONDecodeError):
            ios = json.loads(ios)
    if not isinstance(ios, list) or not ios:
        raise ValueError(
            f'{where}: column "ios" must be a non-empty list of {{"input": {{...}}, "output": ...}} '
            f"cases, got {excerpt(repr(ios))}; drop the row or fill in its cases"
        )
    for index, case in enumerate(ios):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise ValueError(
                f'{where}: column "ios" case {index} must be an object with "input" and "output", '
                f"got {excerpt(repr(case))}; fix or drop that case"
            )
    return ios
