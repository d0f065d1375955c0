"""Config validation: the schema (defaults, unknown keys, types) and the cross-key checks."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from fst.config import ConfigError, problems_per_round, validate_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SOURCE = "my-experiment.yaml"


@pytest.fixture
def shipped() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}:"), message
    return message


def test_shipped_config_validates_and_gets_defaults(shipped):
    original = copy.deepcopy(shipped)
    resolved = validate_config(shipped, SCHEMA, source="config/config.yaml")
    assert shipped == original, "validation must not mutate the caller's config"
    # values given in the file are kept
    assert resolved["rounds"] == shipped["rounds"]
    assert resolved["rollout"]["group_size"] == shipped["rollout"]["group_size"]
    assert resolved["slow"]["warmup_steps"] == shipped["slow"]["warmup_steps"]
    # keys left out take the schema defaults, nested ones too
    assert "target_modules" not in shipped["slow"]["lora"]
    assert resolved["slow"]["lora"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert resolved["slow"]["batch_size"] % resolved["rollout"]["group_size"] == 0


def test_empty_config_is_all_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    resolved = validate_config({}, SCHEMA)
    assert set(resolved) == set(schema["properties"])
    assert resolved["rounds"] == schema["properties"]["rounds"]["default"]
    assert resolved["tasks"]["sizes"] == {"train": 128, "val": 32, "test": 32}
    assert resolved["tasks"]["data_file"] is None
    assert resolved["tracking"]["uri"] is None
    # defaults are copies: editing one resolved config does not leak into the next
    resolved["slow"]["lora"]["target_modules"].append("gate_proj")
    assert "gate_proj" not in validate_config({}, SCHEMA)["slow"]["lora"]["target_modules"]


def test_unknown_top_level_key_names_it_and_suggests_the_close_match(shipped):
    shipped["roundz"] = 4
    message = _error(shipped)
    assert "'roundz'" in message
    assert "did you mean 'rounds'" in message


@pytest.mark.parametrize(
    ("section", "typo", "meant"),
    [("slow", "batch_sze", "batch_size"), ("rollout", "temprature", "temperature")],
)
def test_unknown_nested_key_names_its_full_path(shipped, section, typo, meant):
    shipped[section][typo] = 8
    message = _error(shipped)
    assert f"'{section}.{typo}'" in message
    assert f"did you mean '{meant}'" in message


def test_unknown_key_deep_inside_lora(shipped):
    shipped["slow"]["lora"]["alpah"] = 16
    message = _error(shipped)
    assert "'slow.lora.alpah'" in message
    assert "did you mean 'alpha'" in message


def test_unknown_key_with_no_close_match_lists_the_known_keys(shipped):
    shipped["tracking"]["zzzzzz"] = 1
    message = _error(shipped)
    assert "'tracking.zzzzzz'" in message
    assert "uri" in message


def test_wrong_type_names_key_value_and_type(shipped):
    shipped["rounds"] = "three"
    message = _error(shipped)
    assert "'rounds'" in message
    assert "'three'" in message
    assert "integer" in message


def test_bool_is_not_an_integer(shipped):
    shipped["rounds"] = True
    assert "'rounds'" in _error(shipped)


def test_wrong_nested_type_names_the_path(shipped):
    shipped["slow"]["learning_rate"] = "fast"
    message = _error(shipped)
    assert "'slow.learning_rate'" in message
    assert "number" in message


def test_bad_enum_lists_allowed_values(shipped):
    shipped["model"]["dtype"] = "int3"
    message = _error(shipped)
    assert "'model.dtype'" in message
    assert "float32" in message and "bfloat16" in message


def test_out_of_range_value_names_the_key(shipped):
    shipped["rollout"]["group_size"] = 1
    assert "rollout.group_size" in _error(shipped)


def test_several_schema_errors_are_reported_together(shipped):
    shipped["rounds"] = "three"
    shipped["slow"]["batch_sze"] = 8
    message = _error(shipped)
    assert "'rounds'" in message and "'slow.batch_sze'" in message


def test_batch_not_multiple_of_group_names_both_keys_and_the_fix(shipped):
    shipped["rollout"]["group_size"] = 4
    shipped["slow"]["batch_size"] = 6
    message = _error(shipped)
    assert "slow.batch_size" in message and "rollout.group_size" in message
    suggested = int(re.search(r"Set slow.batch_size to e.g. (\d+)", message).group(1))
    assert suggested > 0 and suggested % 4 == 0


def test_batch_smaller_than_group_suggests_one_group(shipped):
    shipped["rollout"]["group_size"] = 8
    shipped["slow"]["batch_size"] = 4
    message = _error(shipped)
    assert "e.g. 8" in message


def test_missing_data_file_is_named(shipped, tmp_path):
    missing = tmp_path / "no-such-problems.jsonl"
    shipped["tasks"]["data_file"] = str(missing)
    message = _error(shipped)
    assert str(missing) in message
    assert "tasks.data_file" in message


def test_existing_data_file_is_accepted_and_replaces_train(shipped, tmp_path):
    data = tmp_path / "problems.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n')
    shipped["tasks"]["data_file"] = str(data)
    # with a data file, tasks.train is ignored, so listing it in ood is no conflict
    shipped["tasks"]["ood"] = [shipped["tasks"]["train"]]
    resolved = validate_config(shipped, SCHEMA, source=SOURCE)
    assert resolved["tasks"]["data_file"] == str(data)


def test_training_task_in_ood_is_rejected(shipped):
    shipped["tasks"]["train"] = "arithmetic"
    shipped["tasks"]["ood"] = ["claims", "arithmetic"]
    message = _error(shipped)
    assert "tasks.ood" in message and "'arithmetic'" in message


def test_too_few_training_problems_for_a_round(shipped):
    shipped["arms"] = ["rl"]  # no GEPA arm: only the RL batch draws on the training split
    shipped["slow"].update(steps_per_round=4, batch_size=8)
    shipped["rollout"]["group_size"] = 4
    shipped["tasks"]["sizes"]["train"] = 7  # a round needs 4 * 8 / 4 = 8
    message = _error(shipped)
    assert "8" in message and "tasks.sizes.train" in message and "7" in message
    shipped["tasks"]["sizes"]["train"] = 8
    validate_config(shipped, SCHEMA, source=SOURCE)


def test_problems_per_round():
    cfg = {"slow": {"steps_per_round": 3, "batch_size": 12}, "rollout": {"group_size": 4}}
    assert problems_per_round(cfg) == 9


def test_gepa_problems_must_fit_in_the_training_split(shipped):
    shipped["tasks"]["sizes"]["train"] = 20
    shipped["fast"].update(anchors=16, pareto_problems=6)
    message = _error(shipped)
    assert "fast.anchors" in message and "22" in message and "tasks.sizes.train" in message


def test_openai_reflection_needs_an_endpoint(shipped):
    shipped["reflection"] = {"backend": "openai", "model": "m"}
    message = _error(shipped)
    assert "reflection.base_url" in message and "reflection.backend: local" in message
