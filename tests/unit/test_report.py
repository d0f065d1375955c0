"""The whole report from synthetic files: noise verdicts, the test split and KL's one definition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fst import artifacts
from fst.evaluate import Bootstrap
from fst.report import build as report
from fst.report.figures import TITLES
from fst.report.markdown import KL_DEFINITION


def _summary() -> pd.DataFrame:
    rows = []
    for arm, values, kls in [("rl", [0.2, 0.4], [0.0, 0.05]), ("fst", [0.2, 0.6], [0.0, 0.02]),
                             ("gepa", [0.2, 0.3], [0.0, 0.0])]:
        for after, (value, kl) in enumerate(zip(values, kls, strict=True)):
            common = {"point": "default", "arm": arm, "seed": 0, "after_rounds": after, "split": "val",
                      "rl_steps": 0 if arm == "gepa" else 4 * after, "policy_rollouts": 16 * after,
                      "task": "arithmetic", "n": 8}
            rows += [common | {"setting": "prompt:seed", "metric": "mean@2", "value": value},
                     common | {"setting": "prompt:seed", "metric": "kl_to_base", "value": kl},
                     common | {"setting": "prompt:x", "metric": "kl_to_base_own_prompt", "value": 2 * kl}]
        rows.append({"point": "default", "arm": arm, "seed": 0, "after_rounds": 1, "split": "test",
                     "selection": "final", "rl_steps": 4, "policy_rollouts": 16, "task": "arithmetic",
                     "setting": "prompt:seed", "metric": "mean@2", "value": values[-1] - 0.05, "n": 8,
                     "ci95_low": 0.0, "ci95_high": 1.0, "val_value": values[-1]})
    return pd.DataFrame(rows)


def _scores() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for arm, p in [("rl", [0.2, 0.4]), ("fst", [0.2, 0.6]), ("gepa", [0.2, 0.3])]:
        for after, chance in enumerate(p):
            frames.append(pd.DataFrame({"point": "default", "arm": arm, "seed": 0, "after_rounds": after,
                                        "task": "arithmetic", "problem_id": [f"p{i}" for i in range(8)],
                                        "score": (rng.random(8) < chance).astype(float)}))
    return pd.concat(frames, ignore_index=True)


def test_report_marks_noise_shows_the_test_split_and_defines_kl_once(tmp_path):
    summary_path, scores_path = tmp_path / "summary.parquet", tmp_path / "scores.parquet"
    artifacts.write_parquet(_summary(), summary_path)
    artifacts.write_parquet(_scores(), scores_path)
    figures = {name: tmp_path / f"figures/{name}.png" for name in TITLES}
    tables = report.build("exp", summary_path, [], pd.DataFrame(), tmp_path / "tables", figures,
                          tmp_path / "report.md", 5, scores_path, [], Bootstrap(300, 0))
    text = (tmp_path / "report.md").read_text()
    assert "## Noise" in text and "## Held-out test split" in text
    assert KL_DEFINITION in text and "SEED prompt" in text
    differences = tables["differences"]
    assert set(differences["comparison"]) >= {"fst − rl", "gepa − rl", "rl: final − start"}
    assert differences.loc[differences["after_rounds"] == 0, "inside_noise"].all()  # identical at step 0
    assert "inside the noise" in text
    assert set(tables["test"]["arm"]) == {"fst", "gepa", "rl"}
    assert {"problems_ci95_low", "problems_ci95_high"} <= set(tables["curves"].columns)
    assert len(tables["curves"]) == 6  # test rows are not curve points
    assert "kl_to_base_own_prompt" in tables["drift"].columns
    caption = Path(__file__).resolve().parents[2] / "workflow/report/kl_vs_reward.rst"
    assert "SEED prompt" in caption.read_text()
