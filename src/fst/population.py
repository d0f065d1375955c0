"""Fast weights Φ: a population of system prompts, as a JSON document with lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from fst.artifacts import read_json, write_json


@dataclass(frozen=True)
class Member:
    id: str
    text: str
    parent_id: str | None
    weight: float
    val_score: float | None
    round_created: int


def seed_population(text: str) -> list[Member]:
    return [Member("seed", text, None, 1.0, None, 0)]


def load_population(path: Path) -> list[Member]:
    return [Member(**m) for m in read_json(path)["members"]]


def save_population(members: list[Member], path: Path, round_index: int) -> None:
    write_json({"round": round_index, "members": [asdict(m) for m in members]}, path)


def spread_over_group(members: list[Member], group_size: int) -> list[Member]:
    """The member used by each rollout of a group: members in turn, heaviest first.

    With K members and G rollouts each member gets G/K rollouts (config validation makes K divide G),
    as in the paper. A population smaller than K (a Pareto front of fewer candidates: see the fast
    stage's warning and `population_size` in fast_report.json) is spread in turn, unevenly if its
    size does not divide G.
    """
    ordered = sorted(members, key=lambda m: -m.weight)
    return [ordered[i % len(ordered)] for i in range(group_size)]


def best_member(members: list[Member]) -> Member:
    return max(members, key=lambda m: m.weight)
