"""CodeIO-style problems: predict what a small generated Python function returns.

The reference answer is always obtained by executing the generated code at data time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from .base import Problem, Score, draw_distinct, exact_score, make_problem

WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "lemon", "piano", "candle", "forest", "rocket",
    "garden", "silver", "pepper", "window", "planet", "butter", "castle", "dragon", "mirror",
    "orange", "banana", "pencil", "rabbit", "summer", "winter", "turtle", "violin", "yellow",
)  # fmt: skip


def _small_int(rng: random.Random) -> int:
    return rng.randint(0, 20)


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _digits(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 6))]


@dataclass(frozen=True)
class Template:
    source: str  # a function f with {placeholders} for constants
    constants: Callable[[random.Random], dict]
    argument: Callable[[random.Random], object]


TEMPLATES = (
    Template(
        "def f(x):\n    return x * {a} + {b}",
        lambda r: {"a": r.randint(2, 9), "b": r.randint(0, 20)},
        _small_int,
    ),
    Template(
        "def f(x):\n    y = x + {a}\n    return y * {b} - x",
        lambda r: {"a": r.randint(1, 9), "b": r.randint(2, 5)},
        _small_int,
    ),
    Template(
        "def f(x):\n    return x // {a} + x % {a}",
        lambda r: {"a": r.randint(2, 5)},
        _small_int,
    ),
    Template(
        "def f(x):\n    if x > {a}:\n        return x - {b}\n    return x + {c}",
        lambda r: {"a": r.randint(3, 15), "b": r.randint(1, 9), "c": r.randint(1, 9)},
        _small_int,
    ),
    Template(
        "def f(x):\n    if x % 2 == 0:\n        return x // 2\n    return x * {a} + 1",
        lambda r: {"a": r.randint(2, 5)},
        _small_int,
    ),
    Template(
        'def f(s):\n    return s[::-1] + "{w}"',
        lambda r: {"w": r.choice("xyz!?") * r.randint(1, 2)},
        _word,
    ),
    Template(
        "def f(s):\n    return s.upper()[:{k}]",
        lambda r: {"k": r.randint(1, 4)},
        _word,
    ),
    Template(
        'def f(s):\n    return s.count("{c}") * {a}',
        lambda r: {"c": r.choice("aeinort"), "a": r.randint(1, 5)},
        _word,
    ),
    Template(
        "def f(s):\n    n = len(s)\n    return n + {a} if n > {b} else n - {a}",
        lambda r: {"a": r.randint(1, 9), "b": r.randint(4, 6)},
        _word,
    ),
    Template(
        "def f(xs):\n    return sum(xs) - max(xs) + {a}",
        lambda r: {"a": r.randint(0, 9)},
        _digits,
    ),
    Template(
        "def f(xs):\n    return xs[{i}:{j}]",
        lambda r: {"i": (i := r.randint(0, 2)), "j": i + r.randint(1, 3)},
        _digits,
    ),
    Template(
        "def f(xs):\n    return len(xs) * {a} + xs[-1]",
        lambda r: {"a": r.randint(2, 9)},
        _digits,
    ),
    Template(
        "def f(xs):\n    return sorted(xs)[{k}]",
        lambda r: {"k": r.choice((0, 1, 2, -1, -2))},
        _digits,
    ),
    Template(
        "def f(xs):\n    big = [x for x in xs if x > {a}]\n    return len(big)",
        lambda r: {"a": r.randint(2, 7)},
        _digits,
    ),
)


def run_function(source: str, argument: object) -> object:
    """Execute source (which defines f) in a fresh namespace and return f(argument)."""
    namespace: dict = {}
    exec(source, namespace)  # our own templated code, never model output
    return namespace["f"](argument)


def question_text(source: str, call: str) -> str:
    return (
        f"Here is a Python function:\n```python\n{source}\n```\n"
        f"What does {call} return? Give only the returned value."
    )


class CodeOutputTask:
    name = "code_output"
    description = (
        "Predicting code output: a small Python function f is shown with one call (on an integer, a string "
        "or a list). A reply is correct when the last value it gives equals what the call returns."
    )

    def generate(
        self, rng: random.Random, n: int, exclude: Collection[str] = frozenset()
    ) -> list[Problem]:
        return draw_distinct(self.name, n, exclude, lambda _slot: self._draw(rng))

    def _draw(self, rng: random.Random) -> Problem:
        template = rng.choice(TEMPLATES)
        source = template.source.format(**template.constants(rng))
        argument = template.argument(rng)
        call = f"f({argument!r})"
        answer = repr(run_function(source, argument))
        meta = {"code": source, "input": repr(argument), "call": call}
        return make_problem(self.name, question_text(source, call), answer, meta)

    def score(self, problem: Problem, reply: str) -> Score:
        return exact_score(problem, reply)
