"""HoVer-like two-hop claim verification over a handful of given facts.

Each problem chains two facts (person -> bridge entity -> place) into a claim. A refuted claim
keeps the first hop and swaps the place, preferably for one that a distractor fact mentions,
so that matching words against the facts is not enough.
"""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from .base import Problem, Score, draw_distinct, label_score, make_problem

SUPPORTED, REFUTED = "SUPPORTED", "REFUTED"
LABEL_WORDS = {
    "supported": SUPPORTED, "true": SUPPORTED, "yes": SUPPORTED,
    "refuted": REFUTED, "false": REFUTED, "no": REFUTED,
    "not supported": REFUTED, "unsupported": REFUTED,
}  # fmt: skip

FIRST_NAMES = (
    "Mara", "Jonas", "Aiko", "Tariq", "Elena", "Pavel", "Nadia", "Felix", "Ines", "Kofi",
    "Sofia", "Mateo", "Yara", "Lukas", "Priya", "Oscar", "Hana", "Diego", "Greta", "Samir",
    "Clara", "Emil", "Leila", "Bruno",
)  # fmt: skip
LAST_NAMES = (
    "Silva", "Berg", "Tanaka", "Haddad", "Novak", "Moreau", "Okafor", "Rossi", "Keller",
    "Lindqvist", "Costa", "Ahmadi", "Fischer", "Mendes", "Kowalski", "Duarte",
)  # fmt: skip
CITY_COUNTRY = {
    "Lisbon": "Portugal", "Madrid": "Spain", "Lyon": "France", "Munich": "Germany",
    "Milan": "Italy", "Kyoto": "Japan", "Toronto": "Canada", "Cairo": "Egypt", "Lima": "Peru",
    "Oslo": "Norway", "Krakow": "Poland", "Nairobi": "Kenya", "Mumbai": "India",
    "Melbourne": "Australia", "Seoul": "South Korea", "Istanbul": "Turkey",
    "Dublin": "Ireland", "Athens": "Greece", "Havana": "Cuba", "Hanoi": "Vietnam",
}  # fmt: skip
CITIES = tuple(CITY_COUNTRY)
COMPANIES = (
    "Brightline", "Northwind Labs", "Copperleaf", "Bluefin Systems", "Quarry & Co",
    "Ashgrove Foods", "Lumen Works", "Redwater Media", "Tidewell", "Orchid Motors",
)  # fmt: skip
BANDS = (
    "The Paper Kites", "Velvet Harbor", "Neon Orchard", "The Quiet Tides", "Iron Lanterns",
    "Glass Meadow", "The Night Owls", "Salt & Ember",
)  # fmt: skip
NOVELS = (
    "The Long Winter", "A House of Clocks", "Salt Roads", "The Ninth Bridge", "Paper Moons",
    "The Amber Field", "Quiet Rivers", "The Last Lantern",
)  # fmt: skip


@dataclass(frozen=True)
class Relation:
    first: str  # person -> bridge
    second: str  # bridge -> place
    claim: str  # person -> place
    bridges: tuple[str, ...]
    places: dict[str, str] | None  # fixed bridge -> place map; None: any city, drawn per problem


def _geo(verb: str) -> Relation:
    return Relation(
        f"{{person}} {verb} {{bridge}}.",
        "{bridge} is a city in {place}.",
        f"{{person}} {verb} {{place}}.",
        CITIES,
        CITY_COUNTRY,
    )


RELATIONS = (
    _geo("was born in"),
    _geo("grew up in"),
    _geo("lives in"),
    _geo("studied in"),
    Relation(
        "{person} works for {bridge}.",
        "{bridge} is based in {place}.",
        "{person} works for a company based in {place}.",
        COMPANIES,
        None,
    ),
    Relation(
        "{person} plays in the band {bridge}.",
        "{bridge} was formed in {place}.",
        "{person} plays in a band formed in {place}.",
        BANDS,
        None,
    ),
    Relation(
        "{person} wrote the novel {bridge}.",
        "{bridge} is set in {place}.",
        "{person} wrote a novel set in {place}.",
        NOVELS,
        None,
    ),
)

INSTRUCTION = "Do the facts support the claim? Answer with exactly one word: SUPPORTED or REFUTED."


@dataclass(frozen=True)
class Chain:
    person: str
    bridge: str
    place: str

    def facts(self, relation: Relation) -> tuple[str, str]:
        values = {"person": self.person, "bridge": self.bridge, "place": self.place}
        return relation.first.format(**values), relation.second.format(**values)


def _chain(rng: random.Random, relation: Relation, avoid: Chain | None = None) -> Chain:
    """A random chain; with `avoid`, one sharing no person, bridge or place with it."""
    while True:
        person = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        bridge = rng.choice(relation.bridges)
        places = relation.places
        place = places[bridge] if places else rng.choice(CITIES)
        chain = Chain(person, bridge, place)
        if avoid is None or not {person, bridge, place} & {avoid.person, avoid.bridge, avoid.place}:
            return chain


def _other_place(rng: random.Random, relation: Relation, place: str) -> str:
    pool = sorted(set(relation.places.values())) if relation.places else CITIES
    return rng.choice([p for p in pool if p != place])


def question_text(facts: list[str], claim: str) -> str:
    listed = "\n".join(f"- {fact}" for fact in facts)
    return f"Facts:\n{listed}\nClaim: {claim}\n{INSTRUCTION}"


class ClaimsTask:
    name = "claims"
    description = (
        "Two-hop claim verification: a few facts about people and places (some of them distractors), then "
        "a claim that chains two facts. A reply is correct when its first label word is SUPPORTED if the "
        "facts give the claim, else REFUTED."
    )

    def generate(
        self, rng: random.Random, n: int, exclude: Collection[str] = frozenset()
    ) -> list[Problem]:
        """Exactly n // 2 problems of each label (the odd one out, if any, is random)."""
        labels = [SUPPORTED, REFUTED] * (n // 2) + [rng.choice((SUPPORTED, REFUTED))] * (n % 2)
        rng.shuffle(labels)
        return draw_distinct(self.name, n, exclude, lambda slot: self._draw(rng, labels[slot]))

    def _draw(self, rng: random.Random, label: str) -> Problem:
        relation = rng.choice(RELATIONS)
        chain = _chain(rng, relation)
        decoy = _chain(rng, relation, avoid=chain)
        hops = chain.facts(relation)
        distractors = rng.sample(decoy.facts(relation), rng.randint(0, 2))
        facts = [*hops, *distractors]
        rng.shuffle(facts)
        claimed = chain.place
        if label == REFUTED:
            mentioned = any(decoy.place in fact for fact in distractors)
            claimed = decoy.place if mentioned else _other_place(rng, relation, chain.place)
        claim = relation.claim.format(person=chain.person, place=claimed)
        meta = {
            "facts": facts,
            "claim": claim,
            "label": label,
            "hops": list(hops),
            "place": chain.place,
            "claimed_place": claimed,
        }
        return make_problem(self.name, question_text(facts, claim), label, meta)

    def score(self, problem: Problem, reply: str) -> Score:
        return label_score(problem, reply, LABEL_WORDS, "SUPPORTED or REFUTED", lambda: _why(problem))


def _why(problem: Problem) -> str:
    meta = problem.meta
    first, second = (f'"{hop}"' for hop in meta["hops"])
    if problem.answer == SUPPORTED:
        return f"{first} and {second} together give the claim"
    return f"{first} and {second} give {meta['place']}, not {meta['claimed_place']}"
