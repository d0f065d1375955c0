"""Config validation: the schema (defaults, unknown keys, types) and the cross-key checks."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from fst.config import ConfigError, default_config, problems_per_round, show_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
SOURCE = "my-experiment.yaml"


@pytest.fixture
def shipped() -> dict:
    """A complete config to edit: the default experiment, every key written out."""
    return default_config()


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config, SCHEMA, source=SOURCE)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}:"), message
    return message


def test_the_default_experiment_is_the_schemas_defaults():
    """One source of truth: config/config.yaml (loaded under every run) restates no setting."""
    shipped = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    original = copy.deepcopy(shipped)
    resolved = validate_config(shipped, SCHEMA, source="config/config.yaml")
    assert shipped == original, "validation must not mutate the caller's config"
    assert resolved == default_config()
    assert set(shipped) == {"experiment"}


def test_show_config_prints_the_resolved_config_with_every_key_explained(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("rounds: 5\nslow: {lora: {r: 8}}\n")
    text = show_config([mine])
    expected = default_config()
    expected["rounds"], expected["slow"]["lora"]["r"] = 5, 8
    assert yaml.safe_load(text) == expected
    assert "# KL coefficient" in text and "# LoRA rank." in text


def test_settings_objects_have_no_defaults_of_their_own():
    """Defaults live in the schema only: a stage's settings object must get every value from it."""
    import dataclasses
    import inspect

    from fst.fast import FastSettings
    from fst.generation import SamplingSettings
    from fst.reflection import LocalReflectionLM, OpenAICompatibleLM
    from fst.slow import LoraSettings, SlowConfig

    for cls in (SlowConfig, LoraSettings, SamplingSettings, FastSettings):
        with_default = [f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
                        or f.default_factory is not dataclasses.MISSING]
        assert not with_default, f"{cls.__name__} has defaults for {with_default}"
    config_keys = {"max_new_tokens", "max_tokens", "temperature", "timeout_s", "api_key_env", "dtype"}
    config_keys |= {"backend"}
    from fst.rollout import generate_rollouts

    for cls in (LocalReflectionLM, OpenAICompatibleLM, generate_rollouts):
        params = inspect.signature(cls).parameters.values()
        assert not [p.name for p in params if p.name in config_keys and p.default is not p.empty], cls


def test_each_stage_gets_the_schemas_value():
    from fst import settings

    cfg = default_config()
    slow = settings.slow(cfg, seed=3)
    assert (slow.warmup_steps, slow.learning_rate, slow.epsilon_high) == (
        cfg["slow"]["warmup_steps"], cfg["slow"]["learning_rate"], cfg["slow"]["epsilon_high"])
    rollout = cfg["rollout"]
    assert (slow.temperature, slow.group_size) == (rollout["temperature"], rollout["group_size"])
    sampling = settings.sampling(cfg)
    assert (sampling.max_new_tokens, sampling.temperature) == (
        cfg["rollout"]["max_new_tokens"], cfg["rollout"]["temperature"])
    assert settings.runtime(cfg) == {"device": "auto", "dtype": "auto", "backend": "auto"}


def test_the_fast_proposer_is_a_config_key_that_validates_and_sweeps(shipped):
    from fst.sweep import resolve_points

    assert default_config()["fast"]["proposer"] == "reflective"
    shipped["fast"]["proposer"] = "blind"
    assert validate_config(shipped, SCHEMA, source=SOURCE)["fast"]["proposer"] == "blind"
    shipped["fast"]["proposer"] = "random"
    message = _error(shipped)
    assert "fast.proposer" in message and "random" in message
    points = resolve_points({"sweep": {"fast.proposer": ["reflective", "blind"]}}, SCHEMA)
    assert {name: cfg["fast"]["proposer"] for name, cfg in points.items()} == {
        "fast.proposer~reflective": "reflective", "fast.proposer~blind": "blind"}


def test_top_p_is_refused_with_the_reason(shipped):
    shipped["rollout"]["top_p"] = 0.9
    message = _error(shipped)
    assert "rollout.top_p" in message and "off-policy" in message and "Remove the key" in message


def test_population_size_must_divide_the_group_size(shipped):
    shipped["rollout"]["group_size"], shipped["slow"]["batch_size"] = 4, 8
    shipped["fast"]["population_size"] = 3
    message = _error(shipped)
    assert "fast.population_size (3)" in message and "rollout.group_size (4)" in message
    assert "e.g. 2" in message
    shipped["arms"] = ["rl", "gepa"]  # no arm spreads RL groups over the population
    validate_config(shipped, SCHEMA, source=SOURCE)


@pytest.mark.parametrize("source", ["/nonexistent/model", "./models/missing", "a/b/c"])
def test_missing_local_model_folder_is_refused(shipped, source):
    shipped["model"]["source"] = source
    message = _error(shipped)
    assert f"model.source '{source}' does not exist" in message


def test_model_folder_without_config_is_refused(shipped, tmp_path):
    shipped["model"]["source"] = str(tmp_path)
    assert "has no config.json" in _error(shipped)


def test_hub_ids_and_existing_folders_are_accepted(shipped, tiny_model_dir):
    for source in ("HuggingFaceTB/SmolLM2-135M-Instruct", str(tiny_model_dir), "packaged:smollm2"):
        shipped["model"]["source"] = source
        validate_config(shipped, SCHEMA, source=SOURCE)


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
    data.write_text("".join(f'{{"question": "{i}+1?", "answer": "{i + 1}"}}\n' for i in range(80)))
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


def test_slow_gpus_must_split_each_step_into_whole_groups(shipped):
    shipped["rollout"]["group_size"], shipped["slow"]["batch_size"] = 4, 8
    shipped["slow"]["gpus"] = 4
    message = _error(shipped)
    assert "slow.batch_size (8)" in message and "slow.gpus × rollout.group_size" in message
    suggested = int(re.search(r"Set slow.batch_size to e.g. (\d+)", message).group(1))
    assert suggested % 16 == 0
    shipped["slow"]["gpus"] = 2
    assert validate_config(shipped, SCHEMA, source=SOURCE)["slow"]["gpus"] == 2


def test_slow_gpus_on_the_cpu_is_refused(shipped):
    shipped["rollout"]["group_size"], shipped["slow"]["batch_size"] = 4, 8
    shipped["slow"]["gpus"], shipped["model"]["device"] = 2, "cpu"
    message = _error(shipped)
    assert "slow.gpus is 2" in message and "model.device is 'cpu'" in message and "slow.gpus: 1" in message
