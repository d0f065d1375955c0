"""POLARIS competition math (the Hugging Face data set POLARIS-Project/Polaris-Dataset-53K).

Each row has "problem", "answer" (often LaTeX) and "difficulty" (e.g. "3/8": the pass rate
DeepSeek-R1-Distill-Qwen-7B reached on it). Replies are scored with math-verify (fst.tasks.math_answers).
"""

from __future__ import annotations

from .base import DATASET_ID_HEX, Problem, Score, make_problem, row_text
from .math_answers import BOXED_INSTRUCTION, math_score, row_answer


class PolarisTask:
    name = "polaris"
    description = (
        "Competition-style math problems (algebra, number theory, geometry, combinatorics, calculus) to "
        "reason through, with the final answer in \\boxed{}. A reply is correct when its final answer is "
        "mathematically equivalent to the reference answer, as checked by math-verify (so 1/2, 0.5 and "
        "\\frac{1}{2} all count, as do equal intervals and sets)."
    )
    columns = ("problem", "answer")

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        question = row_text(row, "problem", where)
        answer = row_answer(row, "answer", where)
        difficulty = row.get("difficulty")
        meta = {"difficulty": difficulty} if isinstance(difficulty, str | int | float) else {}
        question = f"{question}\n\n{BOXED_INSTRUCTION}"
        return [make_problem(self.name, question, answer, meta, DATASET_ID_HEX)]

    def score(self, problem: Problem, reply: str) -> Score:
        return math_score(problem, reply)
