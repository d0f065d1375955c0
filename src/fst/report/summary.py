"""Experiment summary: every run's evaluation table in one Parquet file, with the compute spent.

Rows of the validation evaluations have split "val"; the held-out test evaluation's rows (final and
selected round, see fst.evaluate.select_round) split "test", with their `selection`. A second table,
the per-problem validation scores, feeds the report's paired bootstrap intervals.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fst.artifacts import read_json

_RUN_PARTS = ("point", "arm", "seed")


def counts_by_run(provenance_paths: list[Path]) -> dict[tuple, dict[int, Counter]]:
    """{run: {round: summed counts}} from <point>/<arm>/seed<k>/round<c>/provenance/<stage>.json.

    The point may span several folders (one per swept key), so the run is read from the right.
    """
    totals: dict[tuple, dict[int, Counter]] = defaultdict(lambda: defaultdict(Counter))
    for path in map(Path, provenance_paths):
        round_index = int(path.parts[-3].removeprefix("round"))
        totals[run_of(path, 2)][round_index].update(read_json(path)["counts"])
    return totals


def run_of(path: Path, depth: int) -> tuple[str, str, int]:
    """(point, arm, seed) of a file `depth` folders below <point>/<arm>/seed<k>/."""
    seed_dir = path.parents[depth]
    arm_dir = seed_dir.parent
    point_parts = []
    for folder in arm_dir.parent.parts[::-1]:
        if "~" not in folder:
            break
        point_parts.insert(0, folder)
    point = "/".join(point_parts) or arm_dir.parent.name
    return point, arm_dir.name, int(seed_dir.name.removeprefix("seed"))


@dataclass(frozen=True)
class Spent:
    """What a run had spent before an evaluation point."""

    rl_steps: int
    policy_rollouts: int


def spent_before(per_round: dict[int, Counter], k: int) -> Spent:
    """RL steps and policy rollouts (RL rollouts + GEPA metric calls) in rounds < k.

    A round's `metric_calls` are the calls it made itself (a killed attempt's included); a search it
    continued made its earlier calls in earlier rounds, charged there: each call is charged once.
    """
    before = sum((counts for r, counts in per_round.items() if r < k), Counter())
    return Spent(before["rl_steps"], before["rollouts"] + before["metric_calls"])


def collect(
    eval_paths: list[Path], provenance_paths: list[Path], test_paths: list[Path] = ()
) -> pd.DataFrame:
    """One row per (run, after_rounds, split, task, setting, metric), with the step axes of the report.

    Both axes come from the stages' provenance counts: rl_steps = RL steps consumed, updates or
    skipped steps whose groups were all dead (0 for arm gepa); policy_rollouts = every rollout the
    policy generated for training, RL rollouts and GEPA metric calls alike (evaluation not included).
    """
    counts = counts_by_run(provenance_paths)
    frames = []
    runs = [(path, 2, "val") for path in map(Path, eval_paths)]  # <run>/eval/after<n>/eval.parquet
    runs += [(path, 1, "test") for path in map(Path, test_paths)]  # <run>/eval/test.parquet
    for path, depth, split in runs:
        frame = pd.read_parquet(path)
        frame["split"] = split
        point, arm, seed = run = run_of(path, depth)
        frame["point"], frame["arm"], frame["seed"] = point, arm, seed
        spent = [spent_before(counts[run], k) for k in frame["after_rounds"]]
        frame["rl_steps"] = [s.rl_steps for s in spent]
        frame["policy_rollouts"] = [s.policy_rollouts for s in spent]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    first = [*_RUN_PARTS, "after_rounds", "split", "rl_steps", "policy_rollouts"]
    return table[first + [c for c in table.columns if c not in first]]


def problem_scores(sample_paths: list[Path]) -> pd.DataFrame:
    """Per (run, after_rounds, task, problem): the validation reward under the arm's own prompt,
    averaged over the problem's k samples, from <run>/eval/after<k>/samples.parquet."""
    frames = []
    for path in map(Path, sample_paths):
        samples = pd.read_parquet(path, columns=["task", "setting", "problem_id", "reward"])
        samples = samples[samples["setting"].str.startswith("prompt:")]
        frame = samples.groupby(["task", "problem_id"], sort=False)["reward"].mean().reset_index()
        frame = frame.rename(columns={"reward": "score"})
        point, arm, seed = run_of(path, 2)
        after = int(path.parent.name.removeprefix("after"))
        frames.append(frame.assign(point=point, arm=arm, seed=seed, after_rounds=after))
    columns = [*_RUN_PARTS, "after_rounds", "task", "problem_id", "score"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]
