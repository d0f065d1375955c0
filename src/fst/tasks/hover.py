"""HoVer multi-hop claim verification (Jiang et al. 2020) read from the HoVer release.

HoVer rows point into Wikipedia ((title, sentence index) supporting facts) without the text, so the
evidence comes from an `evidence` column, or from options["evidence"]: HoVer's corpus wiki_wo_links.db
(each gold article's whole introduction) or a JSONL of {"title", "sentences"} per article. The task is
labelling the claim with its gold evidence given, not HoVer's retrieval task (docs/paper-tasks.md, "How
this differs from the paper's HoVer-hard").
"""

from __future__ import annotations

import sqlite3
import unicodedata
from functools import lru_cache
from pathlib import Path

from .base import DATASET_ID_HEX, Problem, Score, excerpt, label_score, make_problem, row_text
from .claims import LABEL_WORDS as CLAIM_WORDS
from .claims import REFUTED
from .sources import read_rows

SUPPORTED, NOT_SUPPORTED = "SUPPORTED", "NOT_SUPPORTED"
LABEL_WORDS = {
    **{word: NOT_SUPPORTED if label == REFUTED else SUPPORTED for word, label in CLAIM_WORDS.items()},
    "not_supported": NOT_SUPPORTED, "not-supported": NOT_SUPPORTED,
}  # fmt: skip
CLASS_LABELS = {0: NOT_SUPPORTED, 1: SUPPORTED}  # the Hugging Face release's ClassLabel order
INSTRUCTION = (
    "Does the evidence support every part of the claim? "
    "Answer with exactly one word: SUPPORTED or NOT_SUPPORTED."
)


def question_text(evidence: list[tuple[str, str]], claim: str) -> str:
    """Evidence grouped by article, in order of first mention, then the claim."""
    articles: dict[str, list[str]] = {}
    for title, sentence in evidence:
        articles.setdefault(title, []).append(sentence)
    listed = "\n".join(f"[{title}] {' '.join(sentences)}" for title, sentences in articles.items())
    return f"Evidence (Wikipedia sentences, by article title):\n{listed}\nClaim: {claim}\n{INSTRUCTION}"


def _key(title: str) -> str:
    return unicodedata.normalize("NFC", title).strip()


@lru_cache(maxsize=4)
def load_evidence(path: str) -> dict[str, list[str]]:
    """title -> sentences of an evidence JSONL, read once per path (the first of repeated titles wins)."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"evidence file not found: {file}; point the dataset's evidence option at a JSONL of "
            '{"title": ..., "sentences": [...]} per Wikipedia article'
        )
    articles: dict[str, list[str]] = {}
    for where, article in read_rows(file):
        title = article.get("title") if isinstance(article, dict) else None
        sentences = article.get("sentences") if isinstance(article, dict) else None
        if not isinstance(title, str) or not isinstance(sentences, list):
            raise ValueError(
                f'{where}: expected {{"title": str, "sentences": [str, ...]}}, got {excerpt(repr(article))}'
            )
        articles.setdefault(_key(title), [str(s).strip() for s in sentences])
    return articles


class HoverTask:
    name = "hover"
    description = (
        "Multi-hop claim verification (HoVer): Wikipedia sentences by article title (the claim's gold "
        "evidence), then a claim that chains facts from two to four articles. A reply is correct when its "
        "first label word is SUPPORTED if the evidence backs every part of the claim, else NOT_SUPPORTED."
    )
    columns = ("claim", "supporting_facts", "label")

    def problems(self, row: dict, where: str, options: dict) -> list[Problem]:
        """One problem, or none when options["min_hops"] is set and the claim has fewer hops."""
        claim = row_text(row, "claim", where)
        label = _label(row.get("label"), where)
        facts = _facts(row.get("supporting_facts"), where)
        unique = list(dict.fromkeys(facts))  # HoVer repeats some pointers
        min_hops = options.get("min_hops")  # the schema's datasets.hover.min_hops: null or an int >= 2
        if min_hops is not None and _hops(row, unique, where) < min_hops:
            return []
        evidence = _evidence(row, facts, where, options)
        uid = row.get("uid")
        meta = {
            "uid": None if uid is None else str(uid),
            "claim": claim,
            "label": label,
            "titles": list(dict.fromkeys(title for title, _ in unique)),
            "supporting_facts": [list(fact) for fact in unique],
            "num_hops": _hops(row, unique, where),
        }
        question = question_text(evidence, claim)
        return [make_problem(self.name, question, label, meta, DATASET_ID_HEX)]

    def score(self, problem: Problem, reply: str) -> Score:
        choices = "SUPPORTED or NOT_SUPPORTED"
        return label_score(problem, reply, LABEL_WORDS, choices, lambda: _why(problem))


def _why(problem: Problem) -> str:
    titles = ", ".join(f'"{title}"' for title in problem.meta["titles"])
    if problem.answer == SUPPORTED:
        return f"the evidence from {titles} together backs every part of the claim"
    return (
        f"the evidence from {titles} does not back every part of the claim (one wrong or unsupported "
        "hop is enough)"
    )


def _label(value: object, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in CLASS_LABELS:
        return CLASS_LABELS[value]
    if isinstance(value, str) and value.strip().upper().replace(" ", "_") in (SUPPORTED, NOT_SUPPORTED):
        return value.strip().upper().replace(" ", "_")
    raise ValueError(
        f'{where}: column "label" must be "SUPPORTED" or "NOT_SUPPORTED" (or the class ids 1 / 0), '
        f"got {value!r}"
    )


def _facts(value: object, where: str) -> list[tuple[str, int]]:
    """(title, sentence index) pairs, in order, from {"key", "value"} objects or [title, index]
    pairs (the original JSON release); a {"key": [...], "value": [...]} column of lists is accepted too."""
    if isinstance(value, dict) and all(isinstance(value.get(k), list) for k in ("key", "value")):
        value = [{"key": k, "value": v} for k, v in zip(value["key"], value["value"], strict=False)]
    if not isinstance(value, list) or not value:
        raise ValueError(
            f'{where}: column "supporting_facts" must be a non-empty list of {{"key": title, "value": '
            f"sentence index}} objects or [title, index] pairs, got {excerpt(repr(value))}"
        )
    facts: list[tuple[str, int]] = []
    for fact in value:
        title, index = (fact.get("key"), fact.get("value")) if isinstance(fact, dict) else (None, None)
        if isinstance(fact, list | tuple) and len(fact) == 2:
            title, index = fact
        if not isinstance(title, str) or isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(
                f'{where}: column "supporting_facts" has {fact!r}; each fact must be {{"key": title, '
                '"value": sentence index}} or [title, index] with a string title and an index >= 0'
            )
        facts.append((title, index))
    return facts


def _hops(row: dict, facts: list[tuple[str, int]], where: str) -> int:
    """Column num_hops, or (when the row lacks it) the number of distinct articles, which it counts."""
    hops = row.get("num_hops")
    if hops is None:
        return len({title for title, _ in facts})
    if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
        raise ValueError(f'{where}: column "num_hops" must be a positive integer, got {hops!r}')
    return hops


def _evidence(row: dict, facts: list[tuple[str, int]], where: str, options: dict) -> list[tuple[str, str]]:
    """(title, sentence) per supporting fact, from the row's evidence column or the evidence file."""
    column = row.get("evidence")
    if column is not None:
        strings = isinstance(column, list) and all(isinstance(s, str) for s in column)
        if not strings or len(column) != len(facts):
            raise ValueError(
                f'{where}: column "evidence" must be a list of {len(facts)} strings, one sentence per '
                f"supporting fact in order, got {excerpt(repr(column))}"
            )
        pairs = [(title, sentence.strip()) for (title, _), sentence in zip(facts, column, strict=True)]
        return list(dict.fromkeys(pairs))
    path = options.get("evidence")
    if not path:
        raise ValueError(
            f'{where}: no evidence text: the row has no "evidence" column and the dataset has no evidence '
            "option; set it to HoVer's wiki_wo_links.db or to a JSONL of "
            '{"title": ..., "sentences": [...]} per Wikipedia article'
        )
    if str(path).endswith(".db"):
        return _introductions(facts, where, str(path))
    articles = load_evidence(str(path))
    evidence = []
    for title, index in dict.fromkeys(facts):
        sentences = articles.get(_key(title))
        if sentences is None or index >= len(sentences):
            found = "is not in it" if sentences is None else f"has only {len(sentences)} sentences there"
            raise ValueError(
                f"{where}: supporting fact ({title!r}, {index}) is missing from the evidence file {path}: "
                f"the article {found}; add the article's sentences to that file or drop the row"
            )
        evidence.append((title, sentences[index]))
    return evidence


@lru_cache(maxsize=4)
def _corpus(path: str) -> sqlite3.Connection:
    """HoVer's Wikipedia corpus (wiki_wo_links.db: table documents(id = title, text = introduction)),
    opened read-only once per path."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"evidence corpus not found: {path}; download HoVer's wiki_wo_links.db")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)


def _introductions(facts: list[tuple[str, int]], where: str, path: str) -> list[tuple[str, str]]:
    """(title, whole introduction) per supporting article, from HoVer's corpus. The corpus holds each
    article's introduction unsplit: HoVer's sentence indexes count in Stanford CoreNLP's split, which we
    do not reproduce, so the model reads the gold articles whole (the sentences pointed to among them)."""
    evidence = []
    for title in dict.fromkeys(title for title, _ in facts):
        found = None
        for key in dict.fromkeys((unicodedata.normalize("NFD", title), title)):  # HoVer stores NFD ids
            found = _corpus(path).execute("SELECT text FROM documents WHERE id = ?", (key,)).fetchone()
            if found:
                break
        if not found or not str(found[0]).strip():
            raise ValueError(
                f"{where}: supporting article {title!r} is not in the evidence corpus {path}; check that "
                "it is HoVer's wiki_wo_links.db, or drop the row"
            )
        evidence.append((title, " ".join(str(found[0]).split())))
    return evidence
