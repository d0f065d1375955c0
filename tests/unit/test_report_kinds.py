"""Continual learning and plasticity report sections on synthetic runs with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fst.evaluate import Bootstrap
from fst.report import continual, plasticity

BOOTSTRAP = Bootstrap(300, 0)
SCHEDULE = ["arithmetic", "code_output", "claims"]
N = 2  # rounds per stage: evaluations after 1-2 are stage 0, 3-4 stage 1, 5-6 stage 2


def _rows(arm: str, task: str, values: list[float], seed: int = 0, point: str = "default") -> list[dict]:
    """One mean@2 row per evaluation point (after_rounds 0, 1, ...), with a run interval of ±0.1."""
    return [
        {
            "point": point,
            "arm": arm,
            "seed": seed,
            "after_rounds": after,
            "split": "val",
            "rl_steps": 4 * after,
            "policy_rollouts": 16 * after,
            "task": task,
            "setting": "prompt:x",
            "metric": "mean@2",
            "value": value,
            "n": 8,
            "ci95_low": value - 0.1,
            "ci95_high": value + 0.1,
        }
        for after, value in enumerate(values)
    ]


def _continual_summary() -> pd.DataFrame:
    flat = [0.1] * 7
    rows = []
    # arithmetic: stage 0 (after 1, 2). rl's 0.9 after 3 rounds lies in stage 1 and must not count.
    rows += _rows("fst", "arithmetic", [0.1, 0.4, 0.6, 0.5, 0.5, 0.5, 0.5])
    rows += _rows("rl", "arithmetic", [0.1, 0.3, 0.5, 0.9, 0.4, 0.3, 0.2])
    # code_output: stage 1 (after 3, 4). Values after 0, 2 and 5 lie outside it.
    rows += _rows("fst", "code_output", [0.9, 0.1, 0.95, 0.2, 0.4, 0.95, 0.3])
    rows += _rows("rl", "code_output", [0.9, 0.1, 0.95, 0.8, 0.6, 0.95, 0.6])
    # claims: stage 2 (after 5, 6): nobody rises above 0.
    rows += _rows("fst", "claims", [0.0] * 7) + _rows("rl", "claims", [0.0] * 7)
    rows += _rows("fst", "kl_only", flat)  # not on the schedule: ignored
    frame = pd.DataFrame(rows)
    kl = frame.assign(metric="kl_to_base", value=0.5)  # other metrics never mix in
    return pd.concat([frame, kl], ignore_index=True)


def _scores(arm: str, after: int, task: str, values: list[float], seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "point": "default",
            "arm": arm,
            "seed": seed,
            "after_rounds": after,
            "task": task,
            "problem_id": [f"p{i}" for i in range(len(values))],
            "score": values,
        }
    )


def test_stage_membership_of_evaluation_points():
    assert continual.stage_of([0, 1, 2, 3, 4, 5, 6], N).tolist() == [-1, 0, 0, 1, 1, 2, 2]
    assert continual.stage_of([3, 4], 3).tolist() == [0, 1]


def test_stage_table_normalises_to_the_best_peak_within_each_stage():
    table = continual.stage_table(_continual_summary(), SCHEDULE, N).set_index(["stage", "arm"])
    assert set(table.reset_index()["task"]) == set(SCHEDULE)
    assert table.loc[(0, "fst"), "peak"] == pytest.approx(0.6)
    assert table.loc[(0, "fst"), "peak_after_rounds"] == 2  # after N rounds: still stage 0
    assert table.loc[(0, "rl"), "peak"] == pytest.approx(0.5)  # not 0.9: after N + 1 is stage 1
    assert table.loc[(0, "fst"), "normalised_peak"] == pytest.approx(1.0)
    assert table.loc[(0, "rl"), "normalised_peak"] == pytest.approx(0.5 / 0.6)
    assert table.loc[(0, "rl"), "normalised_peak_ci95_low"] == pytest.approx(0.4 / 0.6)  # raw interval / 0.6
    assert table.loc[(0, "rl"), "normalised_peak_ci95_high"] == pytest.approx(0.6 / 0.6)
    assert table.loc[(0, "rl"), "interval"] == "bootstrap over problems"
    # stage 1: code_output after 3 and 4 only (0.95 after 2 and 5 are other stages)
    assert table.loc[(1, "rl"), "peak"] == pytest.approx(0.8)
    assert table.loc[(1, "rl"), "peak_after_rounds"] == 3
    assert table.loc[(1, "fst"), "peak"] == pytest.approx(0.4)
    assert table.loc[(1, "fst"), "normalised_peak"] == pytest.approx(0.5)
    assert table.loc[(1, "fst"), "end"] == pytest.approx(0.4)
    assert table.loc[(1, "fst"), "end_after_rounds"] == 4
    assert table.loc[(1, "rl"), "normalised_end"] == pytest.approx(0.6 / 0.8)
    assert (table.loc[[(0, "fst"), (1, "rl")], "note"] == "").all()


def test_zero_best_peak_gives_nan_with_a_note():
    table = continual.stage_table(_continual_summary(), SCHEDULE, N).set_index(["stage", "arm"])
    claims = table.loc[2]
    assert (claims["peak"] == 0).all() and (claims["best_peak"] == 0).all()
    assert claims["normalised_peak"].isna().all() and claims["normalised_end"].isna().all()
    assert (claims["note"] == continual.NO_NORMALISER).all()


def test_seeds_are_averaged_before_the_maximum():
    rows = _rows("rl", "arithmetic", [0.0, 0.8, 0.2], seed=0) + _rows(
        "rl", "arithmetic", [0.0, 0.2, 0.6], seed=1
    )
    rows += _rows("fst", "arithmetic", [0.0, 0.25, 0.25], seed=0) + _rows(
        "fst", "arithmetic", [0.0, 0.25, 0.25], 1
    )
    table = continual.stage_table(pd.DataFrame(rows), ["arithmetic"], N).set_index("arm")
    rl = table.loc["rl"]
    assert rl["peak"] == pytest.approx(0.5) and rl["peak_after_rounds"] == 1  # means 0.5, 0.4; not max 0.8
    assert rl["seeds"] == 2 and rl["interval"] == "t over seeds"
    half = np.std([0.8, 0.2], ddof=1) / np.sqrt(2) * 12.7062047  # t(0.975, 1 dof)
    assert rl["peak_ci95_high"] == pytest.approx(0.5 + half, rel=1e-6)
    assert rl["normalised_peak"] == pytest.approx(1.0)
    assert table.loc["fst", "normalised_peak"] == pytest.approx(0.5)
    assert table.loc["fst", "normalised_peak_ci95_low"] == pytest.approx(0.5)  # identical seeds: zero width


def test_forgetting_verdicts_for_finished_stages_only():
    kept = [1.0, 0.0, 1.0, 0.5, 1.0, 0.0, 1.0, 0.5]
    dropped_end = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]
    dropped_final = [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    scores = pd.concat(
        [
            _scores("fst", 2, "arithmetic", kept),
            _scores("fst", 6, "arithmetic", kept),
            _scores("rl", 2, "arithmetic", dropped_end),
            _scores("rl", 6, "arithmetic", dropped_final),
            _scores("fst", 4, "code_output", kept),
            _scores("fst", 6, "code_output", kept[1:] + kept[:1]),
        ]
    )
    table = continual.forgetting_table(_continual_summary(), scores, SCHEDULE, N, BOOTSTRAP)
    assert set(zip(table["arm"], table["task"], strict=True)) == {
        ("fst", "arithmetic"),
        ("rl", "arithmetic"),
        ("fst", "code_output"),
        ("rl", "code_output"),
    }
    table = table.set_index(["arm", "task"])
    rl = table.loc[("rl", "arithmetic")]
    assert rl["end"] == pytest.approx(0.5) and rl["end_after_rounds"] == 2
    assert rl["final"] == pytest.approx(0.2) and rl["final_after_rounds"] == 6
    assert rl["difference"] == pytest.approx(1 / 8 - 7 / 8)
    assert rl["difference_ci95_high"] < 0 and rl["verdict"] == "outside the noise"
    same = table.loc[("fst", "arithmetic")]
    assert same["difference"] == 0 and same["inside_noise"] and same["verdict"] == "inside the noise"
    shuffled = table.loc[("fst", "code_output")]
    assert shuffled["difference_ci95_low"] < 0 < shuffled["difference_ci95_high"]
    assert shuffled["verdict"] == "inside the noise" and shuffled["end_after_rounds"] == 4
    assert table.loc[("rl", "code_output"), "verdict"] == "no per-problem scores"


def test_continual_figures_and_section(tmp_path):
    summary = _continual_summary()
    tables = continual.tables(summary, pd.DataFrame(), SCHEDULE, N, BOOTSTRAP)
    files = {name: tmp_path / f"figures/{name}.png" for name in continual.FIGURES}
    continual.draw(summary, tables, SCHEDULE, N, files)
    assert all(path.stat().st_size > 0 for path in files.values())
    fig = continual.per_task_curves(summary, SCHEDULE, N, tmp_path / "again.png")
    switches = {line.get_xdata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--"}
    assert switches == {2, 4}
    assert [ax.get_title() for ax in fig.axes] == [f"{t} (shaded: trained on it)" for t in SCHEDULE]
    text = "\n\n".join(continual.section(tables, files, tmp_path / "report.md"))
    assert text.startswith("## Continual learning")
    assert (
        "switches after rounds 2, 4" in text and "stage 1: code_output (evaluations after rounds 3–4)" in text
    )
    assert "(figures/continual_normalised_stages.png)" in text and "inside the noise" in text


def _phase_b_summary() -> pd.DataFrame:
    rows = _rows("base", "claims", [0.2, 0.3, 0.4]) + _rows("rl", "claims", [0.2, 0.25, 0.3])
    rows += _rows("fst", "claims", [0.2, 0.6, 0.4], seed=0) + _rows("fst", "claims", [0.2, 0.4, 0.5], seed=1)
    return pd.DataFrame(rows)


def _phase_b_scores() -> pd.DataFrame:
    base = [0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.5]
    return pd.concat(
        [
            _scores("base", 2, "claims", base),
            _scores("rl", 2, "claims", base[1:] + base[:1]),
            _scores("fst", 2, "claims", [min(v + 0.5, 1.0) for v in base], seed=0),
            _scores("fst", 2, "claims", [min(v + 0.25, 1.0) for v in base], seed=1),
            _scores("fst", 1, "claims", [0.0] * 8),  # another round: never paired with base's final
        ]
    )


def test_plasticity_table_known_answers():
    table = plasticity.plasticity_table(_phase_b_summary(), _phase_b_scores(), BOOTSTRAP).set_index("init")
    fst = table.loc["fst"]
    assert fst["start"] == pytest.approx(0.2) and fst["start_after_rounds"] == 0
    assert fst["peak"] == pytest.approx(0.5) and fst["peak_after_rounds"] == 1  # means 0.5, 0.45
    assert fst["final"] == pytest.approx(0.45) and fst["final_after_rounds"] == 2 and fst["seeds"] == 2
    half = np.std([0.4, 0.5], ddof=1) / np.sqrt(2) * 12.7062047
    assert fst["final_ci95_low"] == pytest.approx(0.45 - half, rel=1e-6)
    base = np.array([0.0, 1.0, 0.5, 0.0, 1.0, 0.5, 0.0, 0.5])
    seed_mean = (np.minimum(base + 0.5, 1.0) + np.minimum(base + 0.25, 1.0)) / 2  # per problem, over seeds
    assert fst["difference"] == pytest.approx(seed_mean.mean() - base.mean())
    assert fst["difference_ci95_low"] > 0 and fst["verdict"] == "outside the noise" and fst["problems"] == 8
    rl = table.loc["rl"]
    assert rl["peak"] == pytest.approx(0.3) and rl["peak_after_rounds"] == 2
    assert rl["final_ci95_low"] == pytest.approx(0.2)  # one seed: the evaluation's own interval
    assert rl["difference"] == pytest.approx(0.0) and rl["verdict"] == "inside the noise"
    assert rl["difference_ci95_low"] < 0 < rl["difference_ci95_high"]
    assert table.loc["base", "verdict"] == "control" and np.isnan(table.loc["base", "difference"])


def test_plasticity_figure_and_section(tmp_path):
    summary = _phase_b_summary()
    tables = plasticity.tables(summary, _phase_b_scores(), BOOTSTRAP)
    files = {name: tmp_path / f"figures/{name}.png" for name in plasticity.FIGURES}
    plasticity.draw(summary, tables, files)
    fig = plasticity.phase_b_curves(summary, tmp_path / "again.png")
    colours = {line.get_label(): line.get_color() for line in fig.axes[0].lines}
    assert colours == {"from base": "black", "from fst": "tab:blue", "from rl": "tab:orange"}
    assert fig.axes[0].lines[1].get_ydata().tolist() == pytest.approx([0.2, 0.5, 0.45])  # fst, seed mean
    text = "\n\n".join(plasticity.section(tables, files, tmp_path / "report.md", "claims"))
    assert text.startswith("## Plasticity (phase B: plain RL on claims from each phase-A checkpoint)")
    assert "(figures/plasticity_phase_b_curves.png)" in text and "outside the noise" in text
