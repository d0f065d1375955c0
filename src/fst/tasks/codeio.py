"""CodeI/O output prediction (Li et al. 2025, arXiv 2502.07316) read from the raw CodeI/O release.

A row of the raw release (hkust-nlp/CodeIO-PyEdu-Reasoning-Raw, one JSON object per line) is one problem
statement (`problem_description`, `io_requirements`) with reference code (`refcode`, entry function
`funcname`) and several input/output cases (`ios`); each case is a problem. The outputs come with the
data: dataset code is never executed. A row whose `ios` is empty gives no problems: the authors did not
store cases whose inputs or outputs exceeded their size limits, and skip such rows.
"""

from __future__ import annotations

import contextlib
import json
import re

from .base import (
    DATASET_ID_HEX,
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
    row_text,
    same_value,
    type_name,
)

SHOWN_CHARS = 120
TEXT_COLUMNS = ("problem_description", "io_requirements", "refcode", "funcname")
KEPT_COLUMNS = ("category", "source")  # copied into a problem's meta when they are strings
_JSON_FENCE = re.compile(r"```json\s*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


def question_text(row: dict, case_input: object) -> str:
    """The authors' output-prediction prompt (problem, I/O requirements, input, code tip), reworded; their
    template's {query} and {io_req} are the release's problem_description and io_requirements."""
    return (
        "You are given a problem that takes some input variables and produces an output:\n\n"
        f"{row['problem_description'].strip()}\n\n"
        f"The input and output requirements are:\n\n{row['io_requirements'].strip()}\n\n"
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
    not count (quotes outside spans are prose apostrophes); a "{" never closed is skipped, and the text
    after it is read as if it were not there.

    Each "{" starts a scan of the text after it; the spans are taken from the first "{" on, each span
    ending where its scan closes and the next one starting at the first "{" after it. All the scans
    are run in one pass: scans in the same string state see the same braces, so they move together.
    """
    spans: list[str] = []
    after = 0
    for start, end in sorted(_brace_ends(text).items()):
        if start >= after:
            spans.append(text[start : end + 1])
            after = end + 1
    return spans


class _Scans:
    """Scans from several "{" in one string state: a brace moves all their depths alike. A scan's depth
    is its key plus `offset`; scans of the same depth stay together until they close."""

    __slots__ = ("by_key", "offset", "size")

    def __init__(self) -> None:
        self.by_key: dict[int, list[int]] = {}  # depth - offset -> the positions of their "{"
        self.offset = 0
        self.size = 0

    def merge(self, other: _Scans) -> _Scans:
        """The scans of both (the smaller moved into the larger, so a merge costs its smaller side)."""
        big, small = (self, other) if self.size >= other.size else (other, self)
        for key, starts in small.by_key.items():
            moved = key + small.offset - big.offset
            have = big.by_key.setdefault(moved, [])
            if len(have) < len(starts):
                have, starts = starts, have
                big.by_key[moved] = have
            have.extend(starts)
        big.size += small.size
        return big


_ESCAPED = ('"\\', "'\\")  # the string states just after a backslash


def _string_state(state: str, char: str) -> str:
    """A scan's string state after `char`: "" outside strings, the quote inside one, the quote and a
    backslash just after a backslash in one. Every open scan is inside a span, so quotes count."""
    if not state:
        return char if char in "\"'" else ""
    if len(state) == 2:  # the character after a backslash is taken as it is
        return state[0]
    if char == state:
        return ""
    return state + "\\" if char == "\\" else state


def _brace_ends(text: str) -> dict[int, int]:
    """The position of each "{" whose scan closes, mapped to the position of its closing "}"."""
    ends: dict[int, int] = {}
    groups: dict[str, _Scans] = {}  # string state -> the open scans in it
    for i, char in enumerate(text):
        if char not in "{}\"'\\" and _ESCAPED[0] not in groups and _ESCAPED[1] not in groups:
            continue
        plain = groups.get("")
        if char == "{":
            plain = groups.setdefault("", _Scans())
            plain.offset += 1
            plain.by_key.setdefault(1 - plain.offset, []).append(i)
            plain.size += 1
        elif char == "}" and plain is not None:
            plain.offset -= 1
            for start in plain.by_key.pop(-plain.offset, []):
                ends[start] = i
                plain.size -= 1
            if not plain.size:
                del groups[""]
        moved: dict[str, _Scans] = {}
        for state, scans in groups.items():
            after = _string_state(state, char)
            moved[after] = moved[after].merge(scans) if after in moved else scans
        groups = moved
    return ends


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
    columns = ("problem_description", "io_requirements", "refcode", "funcname", "ios")

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        """The first `cases_per_row` cases of `ios` (repeated inputs skipped); none when `ios` is empty."""
        cases = _cases(row, where)
        if not cases:  # skipped, as the authors do
            return []
        for column in TEXT_COLUMNS:
            row_text(row, column, where)
        limit = options["cases_per_row"]  # the schema's datasets.codeio.cases_per_row, at least 1
        problems: list[Problem] = []
        seen: set[str] = set()
        for index, case in enumerate(cases):
            if len(problems) == limit:
                break
            question = question_text(row, case["input"])
            if question in seen:
                continue
            seen.add(question)
            meta = {"funcname": row["funcname"], "input": to_json(case["input"]), "case": index}
            meta.update({key: row[key] for key in KEPT_COLUMNS if isinstance(row.get(key), str)})
            answer = to_json(case["output"])
            problems.append(make_problem(self.name, question, answer, meta, hex_digits=DATASET_ID_HEX))
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


def _cases(row: dict, where: str) -> list[dict]:
    """`ios` as a list of {"input", "output"} cases; a JSON string holding that list is accepted too
    (how a Parquet snapshot may store mixed-type values). An empty list is a row the authors left
    without cases (too large to store) and skip."""
    ios = row.get("ios")
    if isinstance(ios, str):
        with contextlib.suppress(json.JSONDecodeError):
            ios = json.loads(ios)
    if not isinstance(ios, list):
        raise ValueError(
            f'{where}: column "ios" must be a list of {{"input": {{...}}, "output": ...}} cases, got '
            f"{excerpt(repr(ios))}; drop the row or fill in its cases"
        )
    for index, case in enumerate(ios):
        if not isinstance(case, dict) or "input" not in case or "output" not in case:
            raise ValueError(
                f'{where}: column "ios" case {index} must be an object with "input" and "output", '
                f"got {excerpt(repr(case))}; fix or drop that case"
            )
    return ios
