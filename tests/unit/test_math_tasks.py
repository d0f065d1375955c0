"""The math-verify families (polaris, physics): rows to problems, rewards, feedback, timeouts."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fst.tasks.base import Problem
from fst.tasks.math_answers import TIMEOUT_S, Verdict, check_answer, math_score
from fst.tasks.physics import PhysicsTask
from fst.tasks.polaris import PolarisTask

FIXTURES = Path(__file__).parents[1] / "fixtures" / "datasets"
POLARIS, PHYSICS = PolarisTask(), PhysicsTask()
# Too deep to compare within any timeout: sympy tries to evaluate the towers.
TOWER, TALLER = r"9^{9^{9^{9}}}", r"\boxed{9^{9^{9^{9^{9}}}}}"


def load(task, path: Path, options: dict | None = None) -> list[Problem]:
    """Rows to problems as a source loader does it: `where` names the file and line."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        problems += task.problems(json.loads(line), f"{path} line {number}", options or {})
    return problems


@pytest.fixture(scope="module")
def polaris() -> dict[str, Problem]:
    return {p.answer: p for p in load(POLARIS, FIXTURES / "polaris.jsonl")}


@pytest.fixture(scope="module")
def physics() -> dict[str, Problem]:
    return {p.answer: p for p in load(PHYSICS, FIXTURES / "physics.jsonl", {"rel_tol": 0.01})}


def check(task, problem: Problem, reply: str, correct: bool, parsed: bool, says: str) -> None:
    score = task.score(problem, reply)
    assert score.components == {"correct": float(correct), "parsed": float(parsed)}, (reply, score)
    assert score.reward == float(correct)
    assert says in score.feedback, (reply, score.feedback)


# --- rows to problems --------------------------------------------------------------------------


def test_polaris_rows_become_boxed_answer_questions(polaris):
    rows = [json.loads(line) for line in (FIXTURES / "polaris.jsonl").read_text().splitlines()]
    assert list(polaris) == [row["answer"] for row in rows]
    assert len({p.id for p in polaris.values()}) == len(rows)
    for row, problem in zip(rows, polaris.values(), strict=True):
        assert problem.task == "polaris" and problem.id.startswith("polaris-")
        assert problem.question.startswith(row["problem"])
        assert problem.question.endswith("Put your final answer in \\boxed{}.")
        assert problem.meta == {"difficulty": row["difficulty"]}
    assert POLARIS.columns == ("problem", "answer")


def test_physics_rows_keep_rel_tol_and_unit_in_meta(physics):
    car = physics["4"]
    assert car.meta == {"rel_tol": 0.01, "unit": "m/s^2"}
    assert "Give the answer in m/s^2." in car.question
    assert physics["36"].meta == {"rel_tol": 0.01}  # the "solution" column is ignored
    assert "3.315*10^(-19)" in physics  # a JSON number in E-notation, as a power of ten


def test_descriptions_say_how_replies_are_scored_without_a_problem():
    for task, name in ((POLARIS, "polaris"), (PHYSICS, "physics")):
        rows = (FIXTURES / f"{name}.jsonl").read_text().splitlines()
        assert task.name == name and "correct when" in task.description
        assert not any(json.loads(row)["problem"][:30] in task.description for row in rows)


@pytest.mark.parametrize(
    ("row", "column", "says"),
    [
        ({"problem": "What is 1+1?"}, "answer", "must be a non-empty string"),
        ({"problem": "What is 1+1?", "answer": "  "}, "answer", "must be a non-empty string"),
        ({"problem": "What is 1+1?", "answer": 2}, "answer", "must be a non-empty string"),
        ({"problem": "What is 1+1?", "answer": "\\frac{1}{"}, "answer", "cannot be read as math"),
        ({"problem": "", "answer": "2"}, "problem", "must be a non-empty string"),
    ],
)
def test_bad_polaris_rows_fail_naming_file_line_and_column(tmp_path, row, column, says):
    path = tmp_path / "polaris.jsonl"
    good = json.dumps({"problem": "What is 2+2?", "answer": "4", "difficulty": "8/8"})
    path.write_text(f"{good}\n{json.dumps(row)}\n")
    with pytest.raises(ValueError, match="answer|problem") as error:
        load(POLARIS, path)
    message = str(error.value)
    assert message.startswith(f"{path} line 2: ") and f'column "{column}"' in message
    assert says in message


def test_bad_physics_rows_fail():
    where, options = "physics.jsonl line 7", {"rel_tol": 0.01}
    with pytest.raises(ValueError, match=f'{where}: column "answer" must be a non-empty string or a number'):
        PHYSICS.problems({"problem": "How fast?", "answer": None}, where, options)
    with pytest.raises(ValueError, match=f'{where}: column "answer": answer .* cannot be read as math'):
        PHYSICS.problems({"problem": "How fast?", "answer": "$"}, where, options)


# --- equivalences ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "1/2",
        "0.5",
        "\\frac{1}{2}",
        "So f(1) = \\boxed{\\frac{1}{2}}.",
        "The value is $\\dfrac12$.",
        "\\dfrac12",  # bare LaTeX on the last line, no delimiters
        "\\boxed{\\dfrac{1}{2}}",
        "First I got 3, but then \\boxed{1/2}; the 7 above was a typo",  # a boxed answer comes first
    ],
)
def test_equivalent_forms_of_one_half_score_alike(polaris, reply):
    check(POLARIS, polaris["\\frac{1}{2}"], reply, True, True, "Correct: the reply's final answer was")


def test_plain_and_latex_references_compare_both_ways():
    assert check_answer("1/2", "\\boxed{\\frac{1}{2}}").correct
    assert check_answer("0.5", "\\boxed{\\dfrac12}").correct
    assert check_answer("\\$12", "It costs 12 dollars.").correct
    assert not check_answer("1/2", "\\boxed{0.51}").correct


def test_intervals_roots_and_pi(polaris):
    interval = polaris["[1,2)"]
    check(POLARIS, interval, "\\boxed{[1, 2)}", True, True, "Correct")
    check(POLARIS, interval, "$x \\in [1,2)$", True, True, "Correct")
    says = "Expected [1,2). The reply's final answer was [1,2]: wrong value."
    check(POLARIS, interval, "\\boxed{[1,2]}", False, True, says)
    check(POLARIS, polaris["3\\sqrt{2}"], "\\boxed{\\sqrt{18}}", True, True, "Correct")
    check(POLARIS, polaris["\\frac{\\pi}{3}"], "\\boxed{60^\\circ}", False, True, "wrong value")
    check(POLARIS, polaris["\\frac{\\pi}{3}"], "\\boxed{\\pi/3}", True, True, "Correct")


# --- wrong and missing answers -----------------------------------------------------------------


def test_wrong_answer_feedback_names_expected_and_given(polaris):
    score = POLARIS.score(polaris["\\frac{1}{2}"], "Hence $f(1) = \\boxed{\\frac{2}{3}}$.")
    assert score.reward == 0.0 and score.components["parsed"] == 1.0
    assert score.feedback == "Expected \\frac{1}{2}. The reply's final answer was \\frac{2}{3}: wrong value."
    cut = POLARIS.score(polaris["12"], "Divisors: \\boxed{10} hmm wait, I missed that 60 also has the")
    assert "Expected 12. The reply's final answer was 10: wrong value" in cut.feedback
    assert "cut off" in cut.feedback


@pytest.mark.parametrize(
    ("reply", "why"),
    [
        ("", "(it was empty)"),
        ("I am not sure how to approach this problem so I will start by", "(it was cut off mid-sentence)"),
    ],
)
def test_reply_without_a_final_answer_is_unparsed(polaris, reply, why):
    problem = polaris["\\frac{1}{2}"]
    verdict = check_answer(problem.answer, reply)
    assert verdict == Verdict(False, False, None, "unparseable")
    says = f"Expected \\frac{{1}}{{2}}; the reply gave no final answer {why}"
    check(POLARIS, problem, reply, False, False, says)


def test_unreadable_boxed_answer_is_named(polaris):
    reply = "So the count is \\boxed{\\frac{1}{"
    verdict = check_answer("12", reply)
    assert not verdict.parsed and verdict.reason == "unparseable" and verdict.answer
    check(POLARIS, polaris["12"], reply, False, False, "could not be read as math")


# --- timeouts and threads ------------------------------------------------------------------------


def test_pathological_comparison_times_out_quickly():
    assert TIMEOUT_S >= 1
    started = time.monotonic()
    verdict = check_answer(TOWER, TALLER, timeout_s=1)
    assert time.monotonic() - started < 4
    assert verdict == Verdict(False, True, "9^{9^{9^{9^{9}}}}", "timeout")
    problem = POLARIS.problems({"problem": "Big?", "answer": TOWER}, "row 1", {})[0]
    score = math_score(problem, TALLER, timeout_s=1)
    assert score.reward == 0.0 and score.components["parsed"] == 1.0
    assert score.feedback.startswith(f"Expected {TOWER}. The verifier timed out comparing")
    assert "simplest form" in score.feedback
    with pytest.raises(ValueError, match="whole number of seconds"):
        check_answer("1", "1", timeout_s=0.5)


def test_math_verify_itself_refuses_to_run_off_the_main_thread():
    """Why check_answer needs its worker: math-verify's signal.alarm timeouts raise in other threads."""
    from math_verify import parse

    with ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="threaded environment"):
        pool.submit(parse, "$1/2$").result()


def test_scoring_off_the_main_thread_keeps_results_and_timeouts(polaris):
    def in_thread(function, *args, **kwargs):
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(function, *args, **kwargs).result()

    assert in_thread(lambda: threading.current_thread() is not threading.main_thread())
    score = in_thread(POLARIS.score, polaris["\\frac{1}{2}"], "\\boxed{0.5}")
    assert score.reward == 1.0
    assert in_thread(check_answer, "[1,2)", "\\boxed{[1,2]}") == Verdict(False, True, "[1,2]", "wrong")
    started = time.monotonic()
    assert in_thread(check_answer, TOWER, TALLER, timeout_s=1).reason == "timeout"
    assert time.monotonic() - started < 20  # the worker's alarm fired, not the backstop
    with pytest.raises(ValueError, match="cannot be read as math"):
        in_thread(check_answer, "\\frac{1}{", "1")


# --- physics tolerance ------------------------------------------------------------------------------


def test_physics_numbers_within_rel_tol_are_correct(physics):
    car = physics["4"]
    check(PHYSICS, car, "\\boxed{4.03\\text{ m/s}^2}", True, True, "is within 1% of 4")
    check(PHYSICS, car, "The acceleration is 4 m/s^2.", True, True, "Correct")
    check(PHYSICS, car, "\\boxed{4\\,\\mathrm{m\\,s^{-2}}}", True, True, "final answer was 4, equal to 4")
    check(PHYSICS, car, "$a = 3.97\\,\\text{m/s}^2$", True, True, "within 1%")
    photon = physics["3.315*10^(-19)"]
    check(PHYSICS, photon, "\\boxed{3.3 \\times 10^{-19}\\,\\text{J}}", True, True, "within 1%")
    check(PHYSICS, photon, "So E = hf = 3.32e-19 J", True, True, "within 1%")


def test_physics_numbers_outside_rel_tol_are_wrong_with_the_slip_named(physics):
    car, photon = physics["4"], physics["3.315*10^(-19)"]
    says = "Expected 4. The reply's final answer was 4.1: wrong value, 2.5% off (the tolerance is 1%)."
    check(PHYSICS, car, "\\boxed{4.1}", False, True, says)
    check(PHYSICS, car, "\\boxed{-4}", False, True, "wrong sign")
    check(PHYSICS, car, "\\boxed{0.004}", False, True, "off by a factor of 10^-3")
    check(PHYSICS, photon, "\\boxed{3.315\\times10^{-16}}", False, True, "off by a factor of 10^3")
    # math-verify alone rounds floats to 6 decimal places and would call these equal
    check(PHYSICS, photon, "\\boxed{9 \\times 10^{-19}}", False, True, "171% off")
    timed = check_answer(TOWER, TALLER, rel_tol=0.01, timeout_s=1)
    assert timed.reason == "timeout" and timed.parsed
    check(PHYSICS, car, "I think the car", False, False, "the reply gave no final answer")


def test_physics_rel_tol_comes_from_the_options_at_build_time():
    row = {"problem": "A car accelerates from rest to 20 m/s in 5 s. Its acceleration?", "answer": "4"}
    (loose,) = PHYSICS.problems(row, "row 1", {"rel_tol": 0.05})
    (tight,) = PHYSICS.problems(row, "row 1", {"rel_tol": 0})
    assert PHYSICS.score(loose, "\\boxed{4.1}").reward == 1.0
    assert PHYSICS.score(tight, "\\boxed{4.01}").reward == 0.0
    assert PHYSICS.score(tight, "\\boxed{4.0}").reward == 1.0
    assert check_answer("4", "\\boxed{4.1}").correct is False  # no tolerance without rel_tol
