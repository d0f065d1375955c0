"""The three offline task families: generation, scoring/feedback, splits."""

import random
import re
from collections import Counter

import pandas as pd
import pytest

from fst.tasks import TASK_NAMES, Problem, get_task, score_reply
from fst.tasks import code_output as code_output_module
from fst.tasks.base import find_numbers, make_problem
from fst.tasks.splits import frame_to_problems, make_splits, problems_to_frame

BIG = {"train": 512, "val": 128, "test": 128}


def check(problem: Problem, reply: str, correct: bool, parsed: bool, says: str) -> None:
    score = score_reply(problem, reply)
    assert score.components == {"correct": float(correct), "parsed": float(parsed)}, reply
    assert score.reward == float(correct)
    assert says.lower() in score.feedback.lower(), (reply, score.feedback)


# --- registry and ids ------------------------------------------------------------------------


def test_each_family_describes_its_task_without_any_of_its_problems():
    """The description is all a blind proposal (fast.proposer blind) is told of the task."""
    from fst.tasks import describe_task

    for name in TASK_NAMES:
        problems = get_task(name).generate(random.Random(0), 20)
        description = describe_task(problems)
        assert description == get_task(name).description and "correct when" in description
        assert not any(p.question.split("\n")[0] in description for p in problems)  # not even a first line
    user = [Problem(f"u{i}", "user", "Q?", "4", {"scoring": s}) for i, s in enumerate(["numeric", "label"])]
    description = describe_task(user)
    assert description.startswith("Questions from the user's own data set")
    assert "last number" in description and "first word" in description and "last value" not in description
    with pytest.raises(ValueError, match="no problems"):
        describe_task([])


def test_registry_names_and_unknown_name():
    assert TASK_NAMES == ("arithmetic", "code_output", "claims")
    assert all(get_task(name).name == name for name in TASK_NAMES)
    with pytest.raises(ValueError, match="arithmetic, code_output, claims"):
        get_task("math")


def test_published_datasets_are_registered_and_scored_through_score_reply():
    from fst.tasks import DATASET_NAMES, FAMILY_NAMES, get_dataset

    assert DATASET_NAMES == ("codeio", "polaris", "hover", "physics")
    assert FAMILY_NAMES == TASK_NAMES + DATASET_NAMES
    assert all(get_dataset(name).name == name for name in DATASET_NAMES)
    with pytest.raises(ValueError, match="codeio, polaris, hover, physics"):
        get_dataset("arithmetic")
    math = Problem("polaris-1", "polaris", "What is 1/4 + 1/4?", "\\frac{1}{2}", {})
    check(math, "So the sum is \\boxed{0.5}.", True, True, "correct")


def test_only_the_answer_after_a_reasoning_models_thinking_is_scored():
    """Qwen3 thinks in <think>...</think> first: a label word or a boxed value on the way is no answer."""
    claim = Problem("hover-1", "hover", "Evidence: ... Claim: ...", "NOT_SUPPORTED", {"titles": ["A", "B"]})
    thinking = "<think>Is it supported? The first hop is supported, yes. The second is not.</think>\n"
    check(claim, thinking + "NOT_SUPPORTED", True, True, "correct")
    check(claim, thinking + "SUPPORTED", False, True, "expected NOT_SUPPORTED")
    math = Problem("polaris-1", "polaris", "What is 1/4 + 1/4?", "\\frac{1}{2}", {})
    thought = "<think>maybe \\boxed{2}? no: 1/4 + 1/4 = 1/2</think> "
    check(math, thought + "\\boxed{\\frac{1}{2}}", True, True, "correct")
    check(math, "<think>it is \\boxed{\\frac{1}{2}}</think> so \\boxed{2}", False, True, "expected")
    arithmetic = get_task("arithmetic").generate(random.Random(0), 1)[0]
    check(arithmetic, f"<think>{arithmetic.answer}</think> I do not know.", False, False, "had none")


def test_unknown_task_cannot_be_scored():
    problem = Problem("x-1", "arithmetc", "1+1?", "2", {})
    with pytest.raises(ValueError, match="arithmetc"):
        score_reply(problem, "2")


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generated_problems_are_distinct_with_hash_ids(name):
    problems = get_task(name).generate(random.Random(0), 50)
    assert len(problems) == 50
    assert len({p.question for p in problems}) == 50
    assert len({p.id for p in problems}) == 50
    for p in problems:
        assert p.task == name
        assert re.fullmatch(rf"{name}-[0-9a-f]{{8}}", p.id)
        assert p.id == make_problem(name, p.question, p.answer, {}).id


@pytest.mark.parametrize("name", TASK_NAMES)
def test_generate_skips_excluded_questions(name):
    first = get_task(name).generate(random.Random(0), 30)
    again = get_task(name).generate(random.Random(0), 30, exclude={p.question for p in first})
    assert not {p.question for p in first} & {p.question for p in again}


# --- arithmetic ------------------------------------------------------------------------------


def test_arithmetic_problems_match_their_operation():
    ops = {
        "add": lambda a, b: a + b,
        "subtract": lambda a, b: a - b,
        "multiply": lambda a, b: a * b,
    }
    problems = get_task("arithmetic").generate(random.Random(1), 200)
    assert {p.meta["op"] for p in problems} == set(ops)
    for p in problems:
        a, b = p.meta["operands"]
        assert 1 <= a <= 99 and 1 <= b <= 99
        assert int(p.answer) == ops[p.meta["op"]](a, b) >= 0
        assert f" {a} " in p.question and f" {b} " in p.question
        assert p.question.endswith("Give the final answer as a number.")


SUBTRACT = make_problem(
    "arithmetic",
    "Tom has 30 apples and gives 9 of them to a friend. How many apples does Tom have left? "
    "Give the final answer as a number.",
    "21",
    {"op": "subtract", "operands": [30, 9]},
)


@pytest.mark.parametrize(
    ("reply", "correct", "parsed", "says"),
    [
        ("30 - 9 = 21", True, True, "correct"),
        ("The answer is **21**.", True, True, "correct"),
        ("39", False, True, "it added instead of subtracting"),
        ("Tom keeps 30 apples.", False, True, "repeated a number from the question"),
        ("30 - 9 = 21, so he has 22", False, True, "21 appeared earlier"),
        ("20", False, True, "Expected 21. The reply's final number was 20: wrong difference"),
        ("He gives 9 of them away and then he counts what is", False, True, "cut off"),
        ("", False, False, "empty"),
        ("How many apples does Tom have left?", False, False, "restated the question"),
        ("First we look at how many apples Tom has and then", False, False, "cut off"),
        ("I am not sure.", False, False, 'prose: "I am not sure."'),
    ],
)
def test_arithmetic_scoring(reply, correct, parsed, says):
    check(SUBTRACT, reply, correct, parsed, says)


def test_number_parsing():
    assert find_numbers("5-3=2, then -4, 1,000 and 3.5; v2 costs $12.") == [
        5,
        3,
        2,
        -4,
        1000,
        3.5,
        12,
    ]
    thousand = make_problem("arithmetic", "q", "1000", {"op": "add", "operands": [999, 1]})
    check(thousand, "That makes 1,000 in total.", True, True, "correct")


# --- code_output -----------------------------------------------------------------------------


def run_shown_code(question: str) -> object:
    """Execute what the model is shown: the code block and the call named in the question."""
    code = re.search(r"```python\n(.*?)\n```", question, re.DOTALL).group(1)
    call = re.search(r"What does (f\(.*\)) return\?", question).group(1)
    namespace: dict = {}
    exec(code, namespace)
    return eval(call, namespace)


def test_code_output_answer_is_the_executed_value():
    problems = get_task("code_output").generate(random.Random(2), 300)
    for p in problems:
        assert repr(run_shown_code(p.question)) == p.answer
        assert p.question.endswith("Give only the returned value.")
        assert p.meta["code"] in p.question
    kinds = Counter(type(run_shown_code(p.question)).__name__ for p in problems)
    assert set(kinds) == {"int", "str", "list"}
    # every template shows up once its constants are masked
    sources = {re.sub(r"-?\d+|\"[^\"]*\"", "#", p.meta["code"]) for p in problems}
    assert len(sources) == len(code_output_module.TEMPLATES)


def code_problem(source: str, argument: object) -> Problem:
    call = f"f({argument!r})"
    answer = repr(code_output_module.run_function(source, argument))
    question = code_output_module.question_text(source, call)
    return make_problem("code_output", question, answer, {"code": source, "call": call})


REVERSE = code_problem('def f(s):\n    return s[::-1] + "x"', "apple")  # 'elppax'
ADD = code_problem("def f(x):\n    return x * 2 + 4", 5)  # 14
SLICE = code_problem("def f(xs):\n    return xs[0:2]", [5, 8, 9])  # [5, 8]


@pytest.mark.parametrize(
    ("problem", "reply", "correct", "parsed", "says"),
    [
        (REVERSE, "'elppax'", True, True, "correct"),
        (REVERSE, "elppax", True, True, "correct"),
        (REVERSE, '"elppax"', True, True, "correct"),
        (REVERSE, "```python\n'elppax'\n```", True, True, "correct"),
        (REVERSE, "Let me think.\nAnswer: `elppax`", True, True, "correct"),
        (REVERSE, "f('apple') returns 'elppax'.", True, True, "correct"),
        (REVERSE, "'elppa'", False, True, "Expected 'elppax'. The reply gave 'elppa': wrong value"),
        (REVERSE, "6", False, True, "wrong type, number instead of str"),
        (REVERSE, "The function reverses the string and then adds", False, False, "cut off"),
        (REVERSE, "", False, False, "empty"),
        (ADD, "14", True, True, "correct"),
        (ADD, "14.0", True, True, "correct"),
        (ADD, "The result is 14.", True, True, "correct"),
        (ADD, "True", False, True, "wrong type, bool instead of number"),
        (ADD, "13", False, True, "Expected 14. The reply gave 13"),
        (ADD, "It multiplies x by two.", False, False, "Expected 14; the reply ended without"),
        (SLICE, "[5,8]", True, True, "correct"),
        (SLICE, "[5, 8, 9]", False, True, "wrong value"),
        (SLICE, "(5, 8)", False, True, "wrong type, tuple instead of list"),
    ],
)
def test_code_output_scoring(problem, reply, correct, parsed, says):
    check(problem, reply, correct, parsed, says)


# --- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "supported"), [(2, {1}), (20, {10}), (64, {32}), (7, {3, 4})])
def test_claims_labels_are_balanced(n, supported):
    problems = get_task("claims").generate(random.Random(n), n)
    assert Counter(p.answer for p in problems)["SUPPORTED"] in supported
    assert {p.answer for p in problems} <= {"SUPPORTED", "REFUTED"}


def test_claims_follow_two_hops():
    for p in get_task("claims").generate(random.Random(3), 200):
        meta = p.meta
        assert 2 <= len(meta["facts"]) <= 4
        assert set(meta["hops"]) <= set(meta["facts"])
        assert all(f"- {fact}" in p.question for fact in meta["facts"])
        assert f"Claim: {meta['claim']}" in p.question
        assert meta["place"] in meta["hops"][1] and meta["claimed_place"] in meta["claim"]
        assert meta["claim"].split()[:2] == meta["hops"][0].split()[:2]  # same person
        assert (meta["claimed_place"] == meta["place"]) == (p.answer == "SUPPORTED")
        assert p.question.endswith("exactly one word: SUPPORTED or REFUTED.")


def test_refuted_claims_often_use_a_place_from_the_distractors():
    refuted = [p for p in get_task("claims").generate(random.Random(4), 200) if p.answer == "REFUTED"]
    from_facts = [p for p in refuted if any(p.meta["claimed_place"] in f for f in p.meta["facts"])]
    assert 0.2 < len(from_facts) / len(refuted) < 1


def claim_problem(label: str, claimed: str) -> Problem:
    facts = ["Mara Silva was born in Lisbon.", "Lisbon is a city in Portugal."]
    claim = f"Mara Silva was born in {claimed}."
    meta = {"facts": facts, "claim": claim, "label": label, "hops": facts}
    meta |= {"place": "Portugal", "claimed_place": claimed}
    return make_problem("claims", f"Facts: ... Claim: {claim}", label, meta)


TRUE_CLAIM = claim_problem("SUPPORTED", "Portugal")
FALSE_CLAIM = claim_problem("REFUTED", "Spain")


@pytest.mark.parametrize(
    ("problem", "reply", "correct", "parsed", "says"),
    [
        (TRUE_CLAIM, "SUPPORTED", True, True, "correct"),
        (TRUE_CLAIM, "supported.", True, True, "correct"),
        (TRUE_CLAIM, "Yes, the claim holds.", True, True, "correct"),
        (TRUE_CLAIM, "True", True, True, "correct"),
        (TRUE_CLAIM, "REFUTED", False, True, "together give the claim. The reply answered REFUTED"),
        (TRUE_CLAIM, "The claim is not supported.", False, True, "answered REFUTED"),
        (FALSE_CLAIM, "Refuted: Lisbon is in Portugal.", True, True, "correct"),
        (FALSE_CLAIM, "false", True, True, "correct"),
        (FALSE_CLAIM, "SUPPORTED, not REFUTED", False, True, "give Portugal, not Spain"),
        (FALSE_CLAIM, "", False, False, "empty"),
        (
            FALSE_CLAIM,
            "Mara Silva was born in Lisbon which is a city that",
            False,
            False,
            "cut off",
        ),
        (FALSE_CLAIM, "Maybe.", False, False, "SUPPORTED or REFUTED (here REFUTED)"),
    ],
)
def test_claims_scoring(problem, reply, correct, parsed, says):
    check(problem, reply, correct, parsed, says)


# --- splits ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_splits_are_exact_disjoint_and_deterministic(name):
    splits = make_splits(name, 7, BIG)
    assert {split: len(problems) for split, problems in splits.items()} == BIG
    questions = [p.question for problems in splits.values() for p in problems]
    assert len(set(questions)) == sum(BIG.values())  # no duplicates within or across splits
    assert make_splits(name, 7, BIG) == splits
    other = make_splits(name, 8, BIG)
    assert {p.question for p in other["train"]} != {p.question for p in splits["train"]}


def test_growing_a_later_split_keeps_the_earlier_ones():
    small = make_splits("arithmetic", 0, {"train": 20, "val": 5, "test": 5})
    large = make_splits("arithmetic", 0, {"train": 20, "val": 5, "test": 50})
    assert small["train"] == large["train"] and small["val"] == large["val"]


def test_claims_splits_are_each_balanced():
    for problems in make_splits("claims", 1, {"train": 64, "val": 32, "test": 32}).values():
        assert Counter(p.answer for p in problems)["SUPPORTED"] == len(problems) // 2


def test_exhausted_family_raises(monkeypatch):
    tiny = code_output_module.Template("def f(x):\n    return x", lambda r: {}, lambda r: r.randint(0, 4))
    monkeypatch.setattr(code_output_module, "TEMPLATES", (tiny,))
    assert len(make_splits("code_output", 0, {"train": 3, "val": 2})["val"]) == 2
    with pytest.raises(ValueError, match="ran out of distinct problems"):
        make_splits("code_output", 0, {"train": 3, "val": 3})


@pytest.mark.parametrize("sizes", [{"train": -1}, {"train": 2.5}, {"train": True}])
def test_bad_sizes_raise(sizes):
    with pytest.raises(ValueError, match="non-negative integer"):
        make_splits("arithmetic", 0, sizes)


def test_frame_round_trip_through_parquet(tmp_path):
    splits = {name: make_splits(name, 0, {"train": 4, "test": 2}) for name in TASK_NAMES}
    merged = {split: [p for s in splits.values() for p in s[split]] for split in ("train", "test")}
    frame = problems_to_frame(merged)
    assert list(frame.columns) == ["id", "task", "split", "question", "answer", "meta"]
    assert frame["split"].tolist() == ["train"] * 12 + ["test"] * 6
    assert isinstance(frame["meta"][0], str)
    frame.to_parquet(tmp_path / "problems.parquet")
    back = frame_to_problems(pd.read_parquet(tmp_path / "problems.parquet"))
    assert back == merged["train"] + merged["test"]
