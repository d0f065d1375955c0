"""The dataset-read families (CodeI/O, HoVer) on fixture rows in each release's own column layout."""

import json
from pathlib import Path

import pytest

from fst.tasks.base import parse_value, same_value
from fst.tasks.codeio import CodeIOTask, brace_objects
from fst.tasks.hover import HoverTask, load_evidence

FIXTURES = Path(__file__).parent.parent / "fixtures" / "datasets"
EVIDENCE = str(FIXTURES / "hover_evidence.jsonl")
CODEIO, HOVER = CodeIOTask(), HoverTask()


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def check(task, problem, reply: str, correct: bool, parsed: bool, *says: str) -> str:
    score = task.score(problem, reply)
    assert score.components == {"correct": float(correct), "parsed": float(parsed)}, (reply, score.feedback)
    assert score.reward == float(correct)
    for part in says:
        assert part.lower() in score.feedback.lower(), (reply, score.feedback)
    return score.feedback


# --- shared helpers ----------------------------------------------------------------------------------


def test_parse_value_takes_json_python_and_mixed_literals():
    assert parse_value('{"output": true}') == {"output": True}
    assert parse_value("{'output': True, 'x': None}") == {"output": True, "x": None}
    assert parse_value("[true, None, 'a']") == [True, None, "a"]
    bad = [("{output: 3}", "`output` is a bare name"), ("f(3)", "expression"), ("[1, 2}", "match")]
    for text, reason in bad:
        with pytest.raises(ValueError, match=reason):
            parse_value(text)


def test_same_value_compares_dicts_element_wise():
    assert same_value({"a": 3, "b": [1.0]}, {"a": 3.0, "b": [1]})
    assert not same_value({"a": True}, {"a": 1})  # plain == would say equal
    assert not same_value({"a": 1}, {"a": 1, "b": 2})


# --- CodeI/O -----------------------------------------------------------------------------------------

WHERE = "codeio.jsonl line 1"


def codeio_problems(options: dict | None = None) -> dict:
    """The problems of every fixture row with cases, keyed by output type of their first case."""
    options = {"cases_per_row": 10} if options is None else options
    problems = {}
    for number, row in enumerate(rows("codeio.jsonl"), start=1):
        found = CODEIO.problems(row, f"codeio.jsonl line {number}", options)
        if not found:
            continue
        kind = type(json.loads(found[0].answer)).__name__
        problems[kind + ("_grid" if "matrix" in row["refcode"] else "")] = found
    return problems


def test_codeio_row_gives_one_problem_per_case_with_json_answers():
    problems = codeio_problems()
    assert set(problems) == {"int", "float", "str", "list", "dict", "bool", "list_grid"}
    assert [p.answer for p in problems["int"]] == ["6", "1", "25"]
    assert [p.answer for p in problems["str"]] == ['"khoor"', '"zab"']
    assert [p.answer for p in problems["bool"]] == ["true", "false"]  # the repeated "Level" case is skipped
    first = problems["int"][0]
    assert first.task == "codeio" and first.id.startswith("codeio-") and len(first.id) == len("codeio-") + 16
    assert first.meta == {
        "funcname": "main_solution",
        "input": '{"a": 12, "b": 18}',
        "case": 0,
        "category": "number theory",
        "source": "hand-written fixture",
    }
    question = first.question
    row = rows("codeio.jsonl")[0]
    assert row["problem_description"].strip() in question and row["io_requirements"].strip() in question
    order = ["Two gears", "`a` (int)", '{"a": 12, "b": 18}', "def gcd(x, y)", '{"output": <your output>}']
    assert [question.index(part) for part in order] == sorted(question.index(part) for part in order)
    assert "Tip:" in question and "without writing or running any code" in question


def test_codeio_row_with_empty_ios_gives_no_problems():
    empty = [row for row in rows("codeio.jsonl") if row["ios"] == []]
    assert len(empty) == 1  # the release keeps such rows; the authors skip them
    assert CODEIO.problems(empty[0], "codeio.jsonl line 8", {"cases_per_row": 10}) == []
    empty[0]["ios"] = "[]"
    assert CODEIO.problems(empty[0], "codeio.jsonl line 8", {"cases_per_row": 10}) == []


def test_codeio_meta_keeps_only_string_category_and_source():
    row = rows("codeio.jsonl")[0]
    row["category"], row["source"] = 3, None
    meta = CODEIO.problems(row, WHERE, {"cases_per_row": 1})[0].meta
    assert set(meta) == {"funcname", "input", "case"}
    del row["category"], row["source"]
    assert CODEIO.problems(row, WHERE, {"cases_per_row": 1})[0].meta == meta


def test_codeio_cases_per_row_caps_the_cases():
    row = rows("codeio.jsonl")[0]
    assert [p.answer for p in CODEIO.problems(row, WHERE, {"cases_per_row": 2})] == ["6", "1"]
    assert len(CODEIO.problems(row, WHERE, {"cases_per_row": 1})) == 1


@pytest.mark.parametrize(
    "kind, reply",
    [
        ("int", 'gcd(12, 18) is 6, so\n{"output": 6}'),
        ("int", 'Reasoning...\n```json\n{"output": 6}\n```'),
        ("int", "The answer is 6.0"),  # 6 vs 6.0: numbers compare numerically
        ("float", '{"output": 3}'),  # the reference is 3.0
        ("float", "```json\n3.0\n```"),
        ("str", '{"output": "khoor"}'),
        ("str", "{'output': 'khoor'}"),
        ("list", "{'output': (2, 3, 5, 7)}"),  # a tuple is what JSON would have made a list
        ("dict", 'Counting words: {"output": {"the": 2, "cat": 1, "saw": 1, "dog": 1}}'),
        ("dict", "{'output': {'dog': 1, 'saw': 1, 'cat': 1, 'the': 2.0}}"),
        ("bool", '{"output": true}'),
        ("bool", "{'output': True}"),
        ("bool", "So the word is a palindrome.\nTrue"),
        ("list_grid", '{"output": [[1, 3], [2, 4]]}'),
    ],
)
def test_codeio_correct_replies_in_several_forms(kind, reply):
    check(CODEIO, codeio_problems()[kind][0], reply, True, True, "correct")


@pytest.mark.parametrize(
    "kind, reply, says",
    [
        ("int", '{"output": 7}', ["expected output 6", "gave 7: wrong value"]),
        ("int", '{"output": "6"}', ["quoted as a string", "number unquoted"]),
        ("int", '{"output": [6]}', ["wrong type, list instead of number"]),
        ("bool", '{"output": 1}', ["wrong type, number instead of bool"]),  # bools never equal numbers
        ("str", '{"output": "KHOOR"}', ['expected output "khoor"', "wrong value"]),
        ("list", '{"output": [2, 3, 5]}', ["3 items instead of 4"]),
        ("dict", '{"output": {"the": 2}}', ["wrong keys"]),
        ("list_grid", '{"output": [[1, 2], [3, 4]]}', ["output [[1, 3], [2, 4]]", "gave [[1, 2], [3, 4]]"]),
    ],
)
def test_codeio_wrong_replies_say_expected_got_and_why(kind, reply, says):
    check(CODEIO, codeio_problems()[kind][0], reply, False, True, *says)


def test_codeio_last_output_object_wins():
    problem = codeio_problems()["int"][0]
    check(CODEIO, problem, 'First {"output": 6}, but on reflection {"output": 3}', False, True, "gave 3")
    check(CODEIO, problem, 'Not {"output": 3}. Final: {"output": 6}', True, True)
    unclosed = 'The set {12, 18 shares {6}, the model\'s {"output": 6}'
    check(CODEIO, problem, unclosed, True, True)
    check(CODEIO, problem, '{"output": "6}"}', False, True, "wrong type, str instead of number")


def test_codeio_many_unclosed_braces_before_the_answer_are_read_in_one_pass():
    reply = "{" * 20_000 + '{"output": 3}'  # a degenerate reply: one scan per "{" would take minutes
    assert brace_objects(reply) == ['{"output": 3}']
    check(CODEIO, codeio_problems()["float"][0], reply, True, True, "correct")  # the reference is 3.0
    check(CODEIO, codeio_problems()["int"][0], reply, False, True, "expected output 6", "gave 3")


@pytest.mark.parametrize(
    "text, spans",
    [
        ('a {"x": 1} b {"y": {"z": 2}} c', ['{"x": 1}', '{"y": {"z": 2}}']),
        ("{ it's {1} and it's {2}", ["{1}", "{2}"]),  # the unclosed "{" is skipped, quotes then prose
        ('{"a": "}"} {"b": 1}', ['{"a": "}"}', '{"b": 1}']),  # a brace in a string does not count
        ('{"a": "\\"}"}', ['{"a": "\\"}"}']),  # nor an escaped quote
        ('{ "{ " } x', ['{ "{ " }']),
        ("} {{1} {2", ["{1}"]),  # a stray "}" and the "{" never closed are ignored
    ],
)
def test_brace_objects_gives_the_outermost_balanced_spans(text, spans):
    assert brace_objects(text) == spans


@pytest.mark.parametrize(
    "reply, error",
    [
        ("{output: 6}", "`output` is a bare name"),
        ('{"output": six}', "`six` is a bare name"),
        ('{"output": [1, 2}', "does not match"),
        ('{"output": <your output>}', "not json or a python literal"),
    ],
)
def test_codeio_reply_that_is_not_a_literal_names_the_parse_error(reply, error):
    feedback = check(CODEIO, codeio_problems()["int"][0], reply, False, False, error)
    assert "is not JSON or a Python literal" in feedback and f"`{reply}`" in feedback


def test_codeio_reply_without_an_answer_or_output_key():
    problem = codeio_problems()["int"][0]
    check(CODEIO, problem, "", False, False, 'expected {"output": 6}', "it was empty")
    check(CODEIO, problem, "I think the gears meet after a while.", False, False, "no final answer", "prose")
    check(CODEIO, problem, '```json\n{"result": 6, "output_note": "x"}\n```', False, False, 'no "output" key')


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.pop("refcode"), 'column "refcode" must be a non-empty string'),
        (lambda r: r.update(problem_description="  "), 'column "problem_description" must be a non-empty'),
        (lambda r: r.pop("io_requirements"), 'column "io_requirements" must be a non-empty string'),
        (lambda r: r.pop("ios"), 'column "ios" must be a list'),
        (lambda r: r.update(ios={"input": {}, "output": 1}), 'column "ios" must be a list'),
        (lambda r: r.update(ios='{"input": {}, "output": 1}'), 'column "ios" must be a list'),
        (lambda r: r.update(ios="[{'input': 1"), 'column "ios" must be a list'),
        (lambda r: r.update(ios=[{"input": {"a": 1, "b": 1}}]), 'column "ios" case 0 must be an object with'),
        (lambda r: r["ios"].append({"output": 3}), 'column "ios" case 3 must be an object with'),
    ],
)
def test_codeio_bad_rows_name_the_row_and_column(change, says):
    row = rows("codeio.jsonl")[0]
    change(row)
    with pytest.raises(ValueError) as err:
        CODEIO.problems(row, WHERE, {"cases_per_row": 10})
    assert str(err.value).startswith(f"{WHERE}: ") and says in str(err.value)


def test_codeio_ios_as_a_json_string_is_read():
    row = rows("codeio.jsonl")[0]
    row["ios"] = json.dumps(row["ios"])
    assert [p.answer for p in CODEIO.problems(row, WHERE, {"cases_per_row": 10})] == ["6", "1", "25"]


# --- HoVer -------------------------------------------------------------------------------------------


def hover_problem(index: int, **options):
    row = rows("hover.jsonl")[index]
    found = HOVER.problems(row, f"hover.jsonl line {index + 1}", {"evidence": EVIDENCE, **options})
    assert len(found) == 1
    return found[0]


def test_hover_labels_in_both_encodings():
    labels = [hover_problem(i).answer for i in range(6)]
    assert labels == ["SUPPORTED", "NOT_SUPPORTED"] * 3
    assert [row["label"] for row in rows("hover.jsonl")][:4] == ["SUPPORTED", 0, 1, "NOT_SUPPORTED"]


def test_hover_question_shows_evidence_by_title_then_the_claim():
    problem = hover_problem(0)  # {"key", "value"} facts; Jane Austen's sentence 1, not 0
    question = problem.question
    assert "[Jane Austen] Austen was born on 16 December 1775 at Steventon rectory" in question
    assert "English novelist" not in question  # only the pointed-to sentences
    assert question.index("[Pride and Prejudice]") < question.index("Claim: The author of Pride")
    assert question.rstrip().endswith("SUPPORTED or NOT_SUPPORTED.")
    assert problem.meta["titles"] == ["Pride and Prejudice", "Jane Austen"]
    assert problem.meta["uid"] == "0f1c2a7e-0001" and problem.meta["num_hops"] == 2


def test_hover_supporting_facts_in_both_encodings_give_the_same_question():
    row = rows("hover.jsonl")[1]  # [title, index] pairs
    as_pairs = HOVER.problems(row, "line 2", {"evidence": EVIDENCE})[0]
    row["supporting_facts"] = [{"key": title, "value": index} for title, index in row["supporting_facts"]]
    as_objects = HOVER.problems(row, "line 2", {"evidence": EVIDENCE})[0]
    assert as_pairs.question == as_objects.question and as_pairs.id == as_objects.id
    assert "[Danube] It rises in the Black Forest in Germany" in as_pairs.question
    row["supporting_facts"] = {"key": ["Vienna", "Danube"], "value": [0, 1]}  # a column of lists
    assert HOVER.problems(row, "line 2", {"evidence": EVIDENCE})[0].question == as_pairs.question


def test_hover_repeated_fact_is_shown_once():
    problem = hover_problem(4)
    assert problem.question.count("Michael Collins was born in Rome") == 1
    assert problem.meta["supporting_facts"] == [
        ["Apollo 11", 0], ["Michael Collins (astronaut)", 0], ["Colosseum", 0], ["Rome", 0]
    ]  # fmt: skip


def test_hover_evidence_from_the_row_column():
    row = rows("hover.jsonl")[5]
    row["evidence"] = ["The drummer of the Beatles was Ringo Starr.", "Ringo Starr was born in Liverpool."]
    problem = HOVER.problems(row, "line 6", {})[0]  # no evidence file needed
    assert "[The Beatles] The drummer of the Beatles was Ringo Starr." in problem.question
    assert "[Ringo Starr] Ringo Starr was born in Liverpool." in problem.question
    row["evidence"] = ["only one sentence"]
    with pytest.raises(ValueError, match='line 6: column "evidence" must be a list of 2 strings'):
        HOVER.problems(row, "line 6", {})


def test_hover_evidence_file_is_read_once_per_path():
    load_evidence.cache_clear()
    hover_problem(0)
    hover_problem(1)
    assert load_evidence.cache_info().misses == 1 and load_evidence.cache_info().hits >= 1


def test_hover_fact_missing_from_the_evidence_file_names_row_and_title(tmp_path):
    row = rows("hover.jsonl")[2]
    row["supporting_facts"][2] = {"key": "Vienna State Opera", "value": 0}
    with pytest.raises(ValueError) as err:
        HOVER.problems(row, "hover.jsonl line 3", {"evidence": EVIDENCE})
    message = str(err.value)
    assert message.startswith("hover.jsonl line 3: ") and "'Vienna State Opera'" in message
    assert "is not in it" in message and "add the article's sentences" in message
    row["supporting_facts"][2] = {"key": "Salzburg", "value": 5}
    with pytest.raises(ValueError, match="'Salzburg', 5.*has only 1 sentences"):
        HOVER.problems(row, "hover.jsonl line 3", {"evidence": EVIDENCE})
    with pytest.raises(ValueError, match='line 3: no evidence text: the row has no "evidence" column'):
        HOVER.problems(row, "hover.jsonl line 3", {})
    with pytest.raises(FileNotFoundError, match="evidence file not found"):
        HOVER.problems(row, "hover.jsonl line 3", {"evidence": str(tmp_path / "none.jsonl")})


def test_hover_min_hops_keeps_only_harder_claims():
    options = {"evidence": EVIDENCE, "min_hops": 3}
    kept = [HOVER.problems(row, f"line {i}", options) for i, row in enumerate(rows("hover.jsonl"), start=1)]
    assert [len(found) for found in kept] == [0, 0, 1, 1, 1, 0]
    assert all(found[0].meta["num_hops"] >= 3 for found in kept if found)
    no_evidence = rows("hover.jsonl")[0]  # a filtered row needs no evidence at all
    assert HOVER.problems(no_evidence, "line 1", {"min_hops": 3}) == []
    assert len(HOVER.problems(no_evidence, "line 1", {"evidence": EVIDENCE, "min_hops": None})) == 1


@pytest.mark.parametrize(
    "index, reply, correct, parsed, says",
    [
        (0, "SUPPORTED", True, True, ["correct: the reply answered SUPPORTED"]),
        (0, "The evidence shows the claim is true.", True, True, ["correct"]),
        (1, "NOT_SUPPORTED", True, True, ["answered NOT_SUPPORTED"]),
        (1, "Not supported: the Danube rises in Germany.", True, True, ["correct"]),
        (1, "Refuted.", True, True, ["correct"]),
        (1, "false", True, True, ["correct"]),
        (1, "SUPPORTED", False, True, ['expected NOT_SUPPORTED: the evidence from "Vienna", "Danube"']),
        (1, "SUPPORTED", False, True, ["does not back every part", "the reply answered SUPPORTED"]),
        (2, "NOT_SUPPORTED", False, True, ['"The Magic Flute", "Wolfgang Amadeus Mozart", "Salzburg"']),
        (2, "No.", False, True, ["expected SUPPORTED", "backs every part", "answered NOT_SUPPORTED"]),
        (2, "", False, False, ["SUPPORTED or NOT_SUPPORTED (here SUPPORTED)", "had neither", "it was empty"]),
        (3, "I am unsure about this one, it depends.", False, False, ["had neither", "prose"]),
    ],
)
def test_hover_scoring_and_feedback(index, reply, correct, parsed, says):
    check(HOVER, hover_problem(index), reply, correct, parsed, *says)


@pytest.mark.parametrize(
    "change, says",
    [
        (lambda r: r.pop("claim"), 'column "claim" must be a non-empty string'),
        (lambda r: r.update(label="MAYBE"), 'column "label" must be "SUPPORTED" or "NOT_SUPPORTED"'),
        (lambda r: r.update(label=2), 'column "label" must be'),
        (lambda r: r.update(supporting_facts=[]), 'column "supporting_facts" must be a non-empty list'),
        (lambda r: r.update(supporting_facts=[["Vienna"]]), "column \"supporting_facts\" has ['Vienna']"),
        (lambda r: r.update(supporting_facts=[{"key": "Vienna", "value": "0"}]), '"supporting_facts" has'),
        (lambda r: r.update(num_hops="two"), 'column "num_hops" must be a positive integer'),
    ],
)
def test_hover_bad_rows_name_the_row_and_column(change, says):
    row = rows("hover.jsonl")[1]
    change(row)
    with pytest.raises(ValueError) as err:
        HOVER.problems(row, "hover.jsonl line 2", {"evidence": EVIDENCE, "min_hops": 2})
    assert str(err.value).startswith("hover.jsonl line 2: ") and says in str(err.value)


def test_descriptions_say_when_a_reply_is_correct_and_columns_match_the_fixtures():
    for task, name in ((CODEIO, "codeio.jsonl"), (HOVER, "hover.jsonl")):
        assert "correct when" in task.description
        assert all(set(task.columns) <= set(row) for row in rows(name))


def _corpus(tmp_path: Path) -> str:
    """HoVer's wiki_wo_links.db in miniature: documents(id = NFD title, text = the introduction)."""
    import sqlite3
    import unicodedata

    path = tmp_path / "wiki_wo_links.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE documents (id PRIMARY KEY, text)")
        for article in rows("hover_evidence.jsonl"):
            title = unicodedata.normalize("NFD", article["title"])
            db.execute("INSERT INTO documents VALUES (?, ?)", (title, " ".join(article["sentences"])))
    return str(path)


def test_hover_evidence_from_hovers_corpus_is_the_whole_introduction_of_each_article(tmp_path):
    corpus = _corpus(tmp_path)
    (problem,) = HOVER.problems(rows("hover.jsonl")[0], "hover.jsonl line 1", {"evidence": corpus})
    articles = {a["title"]: " ".join(" ".join(a["sentences"]).split()) for a in rows("hover_evidence.jsonl")}
    for title in ("Pride and Prejudice", "Jane Austen"):  # every sentence, not only the pointed-to one
        assert f"[{title}] {articles[title]}" in problem.question
    (same,) = HOVER.problems(rows("hover.jsonl")[0], "hover.jsonl line 1", {"evidence": EVIDENCE})
    assert same.answer == problem.answer and same.meta == problem.meta
    row = rows("hover.jsonl")[0] | {"supporting_facts": [["Pride and Prejudice", 0], ["Nowhere Town", 0]]}
    with pytest.raises(ValueError, match=r"line 1: supporting article 'Nowhere Town' is not in the evidence"):
        HOVER.problems(row, "hover.jsonl line 1", {"evidence": corpus})
