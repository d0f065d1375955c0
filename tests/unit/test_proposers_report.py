"""The reflective-vs-blind section on synthetic twins with known answers."""

import numpy as np
import pandas as pd
import pytest

from fst.evaluate import Bootstrap
from fst.report import proposers

BOOTSTRAP = Bootstrap(resamples=500, seed=0)
REFLECTIVE, BLIND = "fast.proposer~reflective", "fast.proposer~blind"
NOISY = [0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 1.0]  # mean 0.5
SHIFTED = [min(v + 0.5, 1.0) for v in NOISY]  # mean 0.8125, never below NOISY: a clear separation
FLIPPED = NOISY[1:] + NOISY[:1]  # same mean, other problems: a paired difference around 0


def test_point_values_parse_key_value_segments():
    assert proposers.point_values("fast.proposer~blind/slow.learning_rate~v1") == {
        "fast.proposer": "blind",
        "slow.learning_rate": "v1",
    }
    assert proposers.point_values("default") == {}


def test_twin_points_pair_names_that_differ_only_in_the_proposer():
    assert proposers.twin_points([BLIND, REFLECTIVE, "default"]) == [
        (REFLECTIVE, BLIND, proposers.NO_OTHER_VALUES)
    ]
    points = [
        f"{REFLECTIVE}/slow.learning_rate~0.002",
        f"{BLIND}/slow.learning_rate~0.001",
        f"{REFLECTIVE}/slow.learning_rate~0.001",
        f"{BLIND}/slow.learning_rate~0.002",
        f"{REFLECTIVE}/slow.learning_rate~v2",  # its blind twin did not run
        "slow.learning_rate~0.001",  # the proposer not swept here
    ]
    assert proposers.twin_points(points) == [
        (
            f"{REFLECTIVE}/slow.learning_rate~0.001",
            f"{BLIND}/slow.learning_rate~0.001",
            "slow.learning_rate~0.001",
        ),
        (
            f"{REFLECTIVE}/slow.learning_rate~0.002",
            f"{BLIND}/slow.learning_rate~0.002",
            "slow.learning_rate~0.002",
        ),
    ]
    assert proposers.twin_points(["default", "slow.learning_rate~0.001"]) == []


def _scores(point: str, arm: str, after: int, values: list[float], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "point": point,
            "arm": arm,
            "seed": seed,
            "after_rounds": after,
            "task": "arithmetic",
            "problem_id": [f"p{i}" for i in range(len(values))],
            "score": values,
        }
    )


def _summary(scores: pd.DataFrame) -> pd.DataFrame:
    """The summary rows those scores give (value = mean over problems); the blind side spends 3 fewer
    policy rollouts per round, so the cost columns tell the sides apart."""
    summary = (
        scores.groupby(["point", "arm", "seed", "after_rounds"])["score"].mean().rename("value").reset_index()
    )
    blind = summary["point"].str.contains("blind")
    summary["policy_rollouts"] = summary["after_rounds"] * 100 + np.where(
        blind, 0, 3 * summary["after_rounds"]
    )
    summary["rl_steps"] = np.where(summary["arm"] == "gepa", 0, summary["after_rounds"] * 4)
    return summary.assign(
        split="val",
        task="arithmetic",
        setting="prompt:seed",
        metric="mean@2",
        n=8,
        ci95_low=np.nan,
        ci95_high=np.nan,
    )


def _twins() -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = pd.concat(
        [
            *(
                _scores(point, arm, 0, NOISY)
                for point in (REFLECTIVE, BLIND)
                for arm in ("fst", "gepa", "rl")
            ),
            _scores(REFLECTIVE, "fst", 1, SHIFTED),
            _scores(BLIND, "fst", 1, NOISY),  # reflective better
            _scores(REFLECTIVE, "gepa", 1, NOISY),
            _scores(BLIND, "gepa", 1, FLIPPED),  # inside the noise
            _scores(REFLECTIVE, "gepa", 2, NOISY),
            _scores(BLIND, "gepa", 2, SHIFTED),  # blind better
            _scores(REFLECTIVE, "rl", 1, SHIFTED),
            _scores(BLIND, "rl", 1, NOISY),  # rl: no fast channel
        ]
    )
    return _summary(scores), scores


def test_difference_sign_verdicts_and_costs():
    summary, scores = _twins()
    table = proposers.tables(summary, scores, BOOTSTRAP)["proposers"].set_index(["arm", "after_rounds"])
    assert set(table.index) == {("fst", 0), ("fst", 1), ("gepa", 0), ("gepa", 1), ("gepa", 2)}  # no rl
    start = table.loc[("fst", 0)]
    assert start["difference"] == 0 and start["verdict"] == "inside the noise"
    better = table.loc[("fst", 1)]
    assert better["reflective"] == pytest.approx(0.8125) and better["blind"] == pytest.approx(0.5)
    assert better["difference"] == pytest.approx(0.3125) and better["ci95_low"] > 0
    assert better["verdict"] == "reflective better" and better["problems"] == 8
    assert better["reflective_policy_rollouts"] == 103 and better["blind_policy_rollouts"] == 100
    noise = table.loc[("gepa", 1)]
    assert noise["difference"] == pytest.approx(0.0)
    assert noise["ci95_low"] < 0 < noise["ci95_high"] and noise["verdict"] == "inside the noise"
    worse = table.loc[("gepa", 2)]
    assert worse["difference"] == pytest.approx(-0.3125) and worse["ci95_high"] < 0
    assert worse["verdict"] == "blind better"
    assert set(table["label"]) == {proposers.NO_OTHER_VALUES}
    assert set(table["reflective_point"]) == {REFLECTIVE} and set(table["blind_point"]) == {BLIND}


def test_scores_are_averaged_over_seeds_before_pairing_per_twin_pair():
    lr = "slow.learning_rate~0.001"
    scores = pd.concat(
        [
            _scores(f"{REFLECTIVE}/{lr}", "fst", 1, SHIFTED, seed=0),
            _scores(f"{REFLECTIVE}/{lr}", "fst", 1, NOISY, seed=1),
            _scores(f"{BLIND}/{lr}", "fst", 1, NOISY, seed=0),
            _scores(f"{BLIND}/{lr}", "fst", 1, NOISY, seed=1),
            _scores(f"{REFLECTIVE}/slow.learning_rate~0.002", "fst", 1, NOISY),  # no twin: left out
        ]
    )
    tables = proposers.tables(_summary(scores), scores, BOOTSTRAP)
    (row,) = tables["proposers"].to_dict("records")
    assert row["label"] == lr and row["seeds"] == 2 and row["problems"] == 8
    assert row["difference"] == pytest.approx((0.8125 - 0.5) / 2)  # half the problems' gain, seed 0 only
    assert row["reflective"] == pytest.approx((0.8125 + 0.5) / 2)
    assert set(tables["proposer_curves"]["proposer"]) == {"reflective", "blind"}


def test_without_per_problem_scores_the_seed_means_differ_but_no_verdict_is_given():
    summary, scores = _twins()
    table = proposers.tables(summary, scores[:0], BOOTSTRAP)["proposers"].set_index(["arm", "after_rounds"])
    assert table.loc[("fst", 1), "difference"] == pytest.approx(0.3125)
    assert np.isnan(table.loc[("fst", 1), "ci95_low"])
    assert set(table["verdict"]) == {"no per-problem scores"}


def test_no_twin_gives_empty_tables_and_says_how_to_get_one(tmp_path):
    scores = pd.concat([_scores(REFLECTIVE, "fst", 0, NOISY), _scores("default", "gepa", 0, NOISY)])
    tables = proposers.tables(_summary(scores), scores, BOOTSTRAP)
    assert set(tables) == {"proposers", "proposer_curves"} and all(t.empty for t in tables.values())
    assert list(tables["proposers"].columns) == proposers.COLUMNS
    blocks = proposers.section(tables, {}, tmp_path / "report.md")
    assert blocks[0].startswith("## Does the feedback matter?")
    assert len(blocks) == 2 and "`sweep: {fast.proposer: [reflective, blind]}`" in blocks[1]
    figure = proposers.draw(_summary(scores), tables, {"reflective_vs_blind": tmp_path / "f.png"})
    assert (tmp_path / "f.png").exists() and figure is not None


def test_figure_draws_reflective_solid_and_blind_dashed_per_fast_arm(tmp_path):
    summary, scores = _twins()
    tables = proposers.tables(summary, scores, BOOTSTRAP)
    out = tmp_path / "figures" / "reflective_vs_blind.png"
    figure = proposers.draw(summary, tables, {"reflective_vs_blind": out})
    assert out.exists()
    visible = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["fst", "gepa"]
    lines = {line.get_label(): line for line in visible[0].get_lines()}
    assert lines["reflective"].get_linestyle() == "-" and lines["blind"].get_linestyle() == "--"
    assert list(lines["reflective"].get_ydata()) == pytest.approx([0.5, 0.8125])
    assert list(lines["blind"].get_ydata()) == pytest.approx([0.5, 0.5])
    assert visible[0].collections  # the bands (over problems: one seed)


def test_section_has_the_table_and_links_the_figure(tmp_path):
    summary, scores = _twins()
    tables = proposers.tables(summary, scores, BOOTSTRAP)
    figure = tmp_path / "figures" / "reflective_vs_blind.png"
    text = "\n\n".join(proposers.section(tables, {"reflective_vs_blind": figure}, tmp_path / "report.md"))
    assert "## Does the feedback matter? Reflective GEPA against its blind twin" in text
    assert "reflective better" in text and "blind better" in text and "inside the noise" in text
    assert f"`{REFLECTIVE}` ↔ `{BLIND}`" in text
    assert "](figures/reflective_vs_blind.png)" in text
    assert proposers.NO_OTHER_VALUES not in text  # no label column when only the proposer is swept
