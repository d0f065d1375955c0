"""Arithmetic word problems (the paper's math tasks, shrunk for a 135M model)."""

from __future__ import annotations

import operator
import random
from collections.abc import Collection

from .base import Problem, Score, draw_distinct, make_problem, numeric_score, same_number

NAMES = (
    "Tom", "Ana", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Eva",
    "Raj", "Lin", "Omar", "Nora", "Finn", "Ella", "Hugo", "Maya", "Ravi", "Lena",
)  # fmt: skip
ITEMS = (
    "apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "stamps",
    "shells", "cards", "balloons", "crayons", "oranges", "buttons", "toy cars",
)  # fmt: skip

# op -> (function, past tense for "it ... instead of", gerund, result noun)
OPS = {
    "add": (operator.add, "added", "adding", "sum"),
    "subtract": (operator.sub, "subtracted", "subtracting", "difference"),
    "multiply": (operator.mul, "multiplied", "multiplying", "product"),
}

TEMPLATES = {
    "add": (
        "{name} has {a} {item} and buys {b} more. How many {item} does {name} have now?",
        "{name} picked {a} {item} in the morning and {b} {item} in the afternoon. "
        "How many {item} did {name} pick in total?",
    ),
    "subtract": (
        "{name} has {a} {item} and gives {b} of them to a friend. "
        "How many {item} does {name} have left?",
        "{name} has {a} {item} and {other} has {b} {item}. "
        "How many more {item} does {name} have than {other}?",
    ),
    "multiply": (
        "{name} buys {a} bags with {b} {item} in each bag. How many {item} does {name} buy?",
        "{name} puts {b} {item} on each of {a} shelves. How many {item} are on the shelves?",
    ),
}

INSTRUCTION = "Give the final answer as a number."


def _operand(rng: random.Random) -> int:
    """Half one-digit, half two-digit numbers."""
    return rng.randint(1, 9) if rng.random() < 0.5 else rng.randint(10, 99)


def _operands(rng: random.Random, op: str) -> tuple[int, int]:
    if op == "multiply":
        return rng.randint(2, 12), rng.randint(2, 9)
    a, b = _operand(rng), _operand(rng)
    return (max(a, b), min(a, b)) if op == "subtract" else (a, b)


class ArithmeticTask:
    name = "arithmetic"
    description = (
        "Arithmetic word problems: a short story in which someone adds, subtracts or multiplies counts of "
        "everyday items (one- and two-digit numbers). A reply is correct when its last number is the answer."
    )

    def generate(
        self, rng: random.Random, n: int, exclude: Collection[str] = frozenset()
    ) -> list[Problem]:
        return draw_distinct(self.name, n, exclude, lambda _slot: self._draw(rng))

    def _draw(self, rng: random.Random) -> Problem:
        op = rng.choice(tuple(OPS))
        a, b = _operands(rng, op)
        name, other = rng.sample(NAMES, 2)
        text = rng.choice(TEMPLATES[op]).format(
            name=name, other=other, item=rng.choice(ITEMS), a=a, b=b
        )
        answer = OPS[op][0](a, b)
        meta = {"op": op, "operands": [a, b]}
        return make_problem(self.name, f"{text} {INSTRUCTION}", str(answer), meta)

    def score(self, problem: Problem, reply: str) -> Score:
        return numeric_score(problem, reply, lambda got: _diagnose(problem, got))


def _diagnose(problem: Problem, got: float) -> str:
    """Name the likely slip behind a wrong final number."""
    op = problem.meta["op"]
    a, b = problem.meta["operands"]
    _, _, gerund, noun = OPS[op]
    for other, (func, past, _, _) in OPS.items():
        if other != op and same_number(got, func(a, b)):
            return f"it {past} instead of {gerund}"
    if got in (a, b):
        return "it repeated a number from the question instead of computing"
    return f"wrong {noun}"
