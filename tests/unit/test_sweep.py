"""Sweep grids: point folders, per-point validation, and bad sweep keys rejected with a fix."""

from pathlib import Path

import pytest

from fst.config import ConfigError
from fst.sweep import DEFAULT_POINT, resolve_points, swept_values

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def test_no_sweep_is_one_default_point():
    points = resolve_points({"rounds": 2}, SCHEMA)
    assert list(points) == [DEFAULT_POINT]
    assert points[DEFAULT_POINT]["rounds"] == 2
    assert swept_values(points[DEFAULT_POINT]) == {}


def test_grid_is_the_product_with_key_value_folders():
    sweep = {"slow.learning_rate": [0.0001, 0.0002], "slow.lora.r": [4, 8], "rollout.temperature": [0.7]}
    points = resolve_points({"sweep": sweep}, SCHEMA)
    assert len(points) == 4
    name = "slow.learning_rate~0.0002/slow.lora.r~8/rollout.temperature~0.7"
    assert name in points
    cfg = points[name]
    assert cfg["slow"]["learning_rate"] == 0.0002 and cfg["slow"]["lora"]["r"] == 8
    assert cfg["slow"]["lora"]["alpha"] == 32  # untouched keys keep their defaults
    assert swept_values(cfg) == {"slow.learning_rate": 0.0002, "slow.lora.r": 8, "rollout.temperature": 0.7}


def test_unsafe_text_values_are_named_by_index():
    points = resolve_points({"sweep": {"prompts.seed": ["Be brief.", "Think/then answer"]}}, SCHEMA)
    assert list(points) == ["prompts.seed~v0", "prompts.seed~v1"]
    assert points["prompts.seed~v1"]["prompts"]["seed"] == "Think/then answer"


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        ({"slow.learnin_rate": [0.1]}, "Did you mean 'slow.learning_rate'?"),
        ({"tasks.seed": [1, 2]}, "shared by all points"),
        ({"slow": [1]}, "not a config key that can be swept"),
        ({"slow.learning_rate": []}, "empty list"),
        ({"slow.learning_rate": 0.1}, "must map to a list"),
        ({"slow.batch_size": [6]}, "sweep point slow.batch_size~6"),
        ({"slow.learning_rate": ["1e-4"]}, "1.0e-4"),
        ({"slow.lora": [{"r": 2}]}, "not a config key"),
    ],
)
def test_bad_sweeps_are_rejected_with_the_key_and_a_fix(sweep, expected):
    with pytest.raises(ConfigError) as info:
        resolve_points({"sweep": sweep}, SCHEMA, source="exp.yaml")
    assert str(info.value).startswith("exp.yaml"), info.value
    assert expected in str(info.value)
