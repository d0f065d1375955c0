"""The one wrapper around math-verify: is a reply's final answer equivalent to a reference answer?

math-verify parses LaTeX/plain answers to sympy (a \\boxed{} answer takes priority) and compares them
symbolically and numerically, so 1/2, 0.5, \\frac{1}{2} and \\dfrac12 score alike, as do intervals and
sets. Its timeouts use signal.alarm, which works only in a process's main thread (elsewhere math-verify
raises ValueError), so off the main thread the check runs in a worker process instead (see `_dispatch`).
math-verify (with sympy) is imported where an answer is read: it takes 0.6 s, which every workflow parse
and stage importing fst.tasks would otherwise pay.
"""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from .base import Problem, Score, describe_missing, excerpt, looks_cut_off, make_score, row_text

# Seconds math-verify may spend on each parse or comparison (its own default). Whole seconds: it uses
# signal.alarm. A nested power such as 9^{9^{9^{9}}} against 9^{9^{9^{9^{9}}}} takes this long to fail.
TIMEOUT_S = 5
# Extra seconds a worker process (off the main thread) gets for its start before it is killed: a backstop
# for a hang the alarm cannot interrupt (long C calls), not the normal timeout path.
WORKER_GRACE_S = 30
# The most timed steps of one check (reference, reply, comparison, numeric tolerance).
_STEPS = 4

REASONS = ("ok", "wrong", "unparseable", "timeout")
BOXED_INSTRUCTION = "Put your final answer in \\boxed{}."  # math-verify reads a boxed answer first
_SCIENTIFIC = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d+)(?![\w.])")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_TRAILING_SPACE = re.compile(r"(?:\\[,;:! ]|~|\s)+$")  # the "\," left where a unit was cut off


@dataclass(frozen=True)
class Verdict:
    correct: bool
    parsed: bool  # a final answer was found and read as math
    answer: str | None  # the final answer as extracted from the reply (math-verify's LaTeX), None if none
    reason: str  # one of REASONS
    # (reply - reference) / reference, when rel_tol is given and both are plain numbers
    rel_error: float | None = None


def check_reference(reference: str, timeout_s: int = TIMEOUT_S) -> str:
    """The reference answer as math-verify reads it; ValueError when it cannot be read as math."""
    return _dispatch(_read_reference, (reference, timeout_s), timeout_s)


def check_answer(
    reference: str, reply: str, rel_tol: float | None = None, timeout_s: int = TIMEOUT_S
) -> Verdict:
    """Whether the reply's final answer equals the reference. With rel_tol, two plain numbers also match
    within that relative tolerance (and E-notation such as 3e8 is read as 3*10^8, not 3*e*8).

    Raises ValueError when the reference answer does not parse (a data error)."""
    return _dispatch(_check, (reference, reply, rel_tol, timeout_s), timeout_s)


# --- main thread or worker process ------------------------------------------------------------

_pool: multiprocessing.pool.Pool | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _dispatch(function: Callable, args: tuple, timeout_s: int):
    """function(*args) here in the main thread; off it, in a one-process pool whose main thread can use
    signal.alarm. A worker that overruns every timeout is killed and the check counts as timed out."""
    global _pool, _pool_pid
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1:
        raise ValueError(f"timeout_s must be a whole number of seconds >= 1, got {timeout_s!r}")
    if threading.current_thread() is threading.main_thread():
        return function(*args)
    with _pool_lock:  # one check at a time in the worker; the others wait their turn
        if _pool is None or _pool_pid != os.getpid():  # a pool inherited through fork is unusable
            _pool = multiprocessing.get_context("spawn").Pool(1)
            atexit.register(_pool.terminate)  # before interpreter teardown, which Pool.__del__ trips over
            _pool_pid = os.getpid()
        pending = _pool.apply_async(function, args)
        try:
            return pending.get(WORKER_GRACE_S + _STEPS * timeout_s)
        except multiprocessing.TimeoutError:
            _pool.terminate()
            _pool = None
            if function is _read_reference:
                raise ValueError(f"reading {args[0]!r} did not finish in time") from None
            return Verdict(False, False, None, "timeout")


# --- the check itself (main thread of this process or of the worker) -------------------------


def _parse_reference(reference: str, timeout_s: int) -> list:
    from math_verify import parse
    text = reference.strip()
    # Plain "1/2" or "[1,2)" needs math delimiters; "\$12" (an escaped dollar) is no delimiter.
    wrapped = text if re.search(r"(?<!\\)\$", text) else f"${text}$"
    try:
        parsed = parse(wrapped, parsing_timeout=timeout_s, raise_on_error=True)
    except Exception:  # noqa: BLE001 - a timeout (BaseException) passes through
        parsed = []
    if not _has_math(parsed):
        raise ValueError(f"answer {reference!r} cannot be read as math by math-verify")
    return parsed


def _read_reference(reference: str, timeout_s: int) -> str:
    from math_verify.errors import TimeoutException
    try:
        return _parse_reference(reference, timeout_s)[-1]
    except TimeoutException:
        raise ValueError(f"reading answer {reference!r} took over {timeout_s} s") from None


def _has_math(parsed: list) -> bool:
    return any(not isinstance(item, str) for item in parsed)


def _read_reply(reply: str, timeout_s: int) -> list:
    """math-verify's default extraction; failing that, a last line of bare LaTeX such as \\dfrac12."""
    from math_verify import parse
    try:
        parsed = parse(reply, parsing_timeout=timeout_s, raise_on_error=True)
    except Exception:  # noqa: BLE001 - anything but a timeout is an unreadable reply
        parsed = []
    if parsed:
        return parsed
    lines = [line.strip() for line in reply.splitlines() if line.strip()]
    if lines and "\\" in lines[-1] and not re.search(r"[A-Za-z]{2}", _COMMAND.sub(" ", lines[-1])):
        try:
            return parse(f"${lines[-1]}$", parsing_timeout=timeout_s, raise_on_error=True)
        except Exception:  # noqa: BLE001
            return []
    return []


def scientific_to_power(text: str) -> str:
    """E-notation as a power of ten ("3e8" -> "3*10^(8)"): math-verify reads 3e8 as 3*e*8 or just 3."""
    return _SCIENTIFIC.sub(r"\1*10^(\2)", text)


def _check(reference: str, reply: str, rel_tol: float | None, timeout_s: int) -> Verdict:
    from math_verify import verify
    from math_verify.errors import TimeoutException
    from math_verify.utils import timeout
    if rel_tol is not None:
        reference, reply = scientific_to_power(reference), scientific_to_power(reply)
    got: list = []
    try:
        gold = _parse_reference(reference, timeout_s)
        got = _read_reply(reply, timeout_s)
        # Two plain numbers are judged by rel_tol alone: math-verify rounds floats to 6 decimal places,
        # so on its own it would call 3.3e-19 and 9e-19 equal.
        error = timeout(timeout_s)(_relative_error)(gold, got) if rel_tol is not None else None
    except TimeoutException:
        return Verdict(False, _has_math(got), _shown(got), "timeout")
    shown = _shown(got)
    if error is not None:
        close = abs(error) <= rel_tol + 1e-12  # 4.04 against 4 is within 1% despite float rounding
        return Verdict(close, True, shown, "ok" if close else "wrong", error)
    timed_out = False
    for want in gold:
        for have in got:
            try:
                if verify(want, have, timeout_seconds=timeout_s, raise_on_error=True):
                    return Verdict(True, True, shown, "ok")
            except TimeoutException:
                timed_out = True
            except Exception:  # noqa: BLE001 - sympy failing to compare two forms is no match
                pass
    parsed = _has_math(got)
    return Verdict(False, parsed, shown, "timeout" if timed_out else "wrong" if parsed else "unparseable")


def _shown(got: list) -> str | None:
    return _TRAILING_SPACE.sub("", got[-1]) if got and isinstance(got[-1], str) else None


def _relative_error(gold: list, got: list) -> float | None:
    """(reply - reference) / reference when both parsed to plain numbers (and the reference is not 0)."""
    math_items = [[item for item in side if not isinstance(item, str)][:1] for side in (gold, got)]
    if not all(math_items):
        return None
    a, b = _number(math_items[0][0]), _number(math_items[1][0])
    if a is None or b is None or a == 0:
        return None
    return (b - a) / a


def _number(expr: object) -> float | None:
    """The value of a plain number (or of the right side of "v = 12"), else None."""
    import sympy

    if isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    if not isinstance(expr, sympy.Expr) or not expr.is_number:
        return None
    try:
        value = float(sympy.N(expr.doit()))
    except (TypeError, ValueError, ArithmeticError):
        return None
    return value if math.isfinite(value) else None


# --- score and feedback shared by the families -----------------------------------------------


def math_score(
    problem: Problem,
    reply: str,
    rel_tol: float | None = None,
    explain: Callable[[Verdict], str | None] | None = None,
    timeout_s: int = TIMEOUT_S,
) -> Score:
    """Binary reward from check_answer, with feedback saying what was expected, what the reply's final
    answer was and what went wrong; explain(verdict) may name a family-specific slip of a wrong answer."""
    want = problem.answer
    verdict = check_answer(want, reply, rel_tol, timeout_s)
    got = excerpt(verdict.answer) if verdict.answer else None
    if verdict.correct:
        if verdict.rel_error:  # a number within rel_tol but not equal
            return make_score(
                True, True, f"Correct: the reply's final answer {got} is within {percent(rel_tol)} of {want}."
            )
        return make_score(True, True, f"Correct: the reply's final answer was {got}, equal to {want}.")
    if verdict.reason == "timeout":
        what = f"comparing the reply's final answer {got} with it" if got else "reading the reply"
        return make_score(
            False,
            verdict.parsed,
            f"Expected {want}. The verifier timed out {what} (over {timeout_s} s); "
            "write the final answer in simplest form.",
        )
    if not verdict.parsed:
        if got:
            why = f"the reply's final answer {got} could not be read as math"
        else:
            why = f"the reply gave no final answer ({describe_missing(reply, problem.question)})"
        return make_score(False, False, f"Expected {want}; {why}. Put the final answer in \\boxed{{}}.")
    why = (explain(verdict) if explain else None) or "wrong value"
    if looks_cut_off(reply):
        why += " (the reply was cut off, so this may not be the answer it was heading for)"
    return make_score(False, True, f"Expected {want}. The reply's final answer was {got}: {why}.")


def percent(fraction: float) -> str:
    return f"{fraction * 100:.3g}%"


# --- source rows ---------------------------------------------------------------------------


def row_answer(row: dict, column: str, where: str, numbers: bool = False) -> str:
    """The reference answer of a source row, checked now so that a bad row fails at data preparation
    rather than scoring every reply to it as wrong. With numbers, a JSON number is accepted too."""
    value = row.get(column)
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        value = scientific_to_power(repr(value))
    kind = "a non-empty string or a number" if numbers else "a non-empty string"
    text = row_text({column: value}, column, where, kind)
    try:
        check_reference(text)
    except ValueError as err:
        raise ValueError(
            f'{where}: column "{column}": {err}; write it as LaTeX (e.g. \\frac{{1}}{{2}}) or a plain '
            "value, or drop the row"
        ) from None
    return text
