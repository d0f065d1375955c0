"""Physics word problems with numeric answers, used as an out-of-domain evaluation set.

A plain layout: "problem" and "answer" (text or a JSON number), optionally "unit" (kept in meta and
named in the question) and "solution" (ignored). The data set's config block gives "rel_tol", the
relative tolerance within which a numeric answer counts as correct; it is stored in each problem's
meta so that scoring needs no config.
"""

from __future__ import annotations

import math

from .base import DATASET_ID_HEX, Problem, Score, make_problem, row_text
from .math_answers import BOXED_INSTRUCTION, Verdict, math_score, percent, row_answer


class PhysicsTask:
    name = "physics"
    description = (
        "Physics word problems (mechanics, electricity and magnetism, thermodynamics, waves, optics) to "
        "reason through, with the final answer in \\boxed{} as a value in the units the problem asks for. "
        "A reply is correct when its final answer equals the reference answer, numbers within a small "
        "relative tolerance (checked by math-verify, which ignores units written as \\text{...})."
    )
    columns = ("problem", "answer")

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        rel_tol = float(options["rel_tol"])  # the schema's datasets.physics.rel_tol
        question = row_text(row, "problem", where)
        answer = row_answer(row, "answer", where, numbers=True)
        meta: dict = {"rel_tol": rel_tol}
        unit = row.get("unit")
        instruction = BOXED_INSTRUCTION
        if isinstance(unit, str) and unit.strip():
            meta["unit"] = unit.strip()
            instruction = f"Give the answer in {unit.strip()}. {BOXED_INSTRUCTION}"
        question = f"{question}\n\n{instruction}"
        return [make_problem(self.name, question, answer, meta, DATASET_ID_HEX)]

    def score(self, problem: Problem, reply: str) -> Score:
        rel_tol = problem.meta["rel_tol"]
        return math_score(problem, reply, rel_tol, lambda verdict: _diagnose(verdict, rel_tol))


def _diagnose(verdict: Verdict, rel_tol: float) -> str | None:
    """Name a sign or power-of-ten slip in a wrong number, else how far off it was."""
    error = verdict.rel_error
    if error is None:
        return None
    ratio = 1 + error
    if math.isclose(ratio, -1, rel_tol=rel_tol):
        return "wrong sign"
    if ratio != 0:
        power = round(math.log10(abs(ratio)))
        if power and math.isclose(abs(ratio), 10.0**power, rel_tol=rel_tol):
            return f"off by a factor of 10^{power} (check units and prefixes)"
    return f"wrong value, {percent(abs(error))} off (the tolerance is {percent(rel_tol)})"
