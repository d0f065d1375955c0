"""Config validation: schema (with defaults filled in) plus the checks a schema cannot express.

Runs when the Snakefile is parsed, so a bad config is rejected before any job starts, with a message
that names the file, the key and the fix.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import jsonschema
import yaml


class ConfigError(ValueError):
    """A config that cannot run; the message says where and how to fix it."""


def _with_defaults(validator_class):
    """jsonschema validator that also writes each property's `default` into the instance.

    jsonschema deliberately never mutates; this is the extension its documentation describes.
    """
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _key_path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<top level>"


def _explain(error, schema: dict) -> str:
    where = _key_path(error)
    if error.validator == "additionalProperties":
        known = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(known))
        hints = []
        for key in extra:
            close = difflib.get_close_matches(key, known, n=1)
            full = f"{where}.{key}" if where != "<top level>" else key
            hint = f"did you mean '{close[0]}'?" if close else f"known keys here: {', '.join(known)}"
            hints.append(f"unknown key '{full}' ({hint})")
        return "; ".join(hints) + ". Remove it or correct its name."
    if error.validator == "enum":
        return f"key '{where}' is {error.instance!r}; allowed values: {error.validator_value}."
    if error.validator == "type":
        hint = ""
        if isinstance(error.instance, str) and _is_number(error.instance):
            hint = " YAML reads numbers like 1e-4 as text: write them with a dot and a sign, 1.0e-4."
        return (
            f"key '{where}' is {error.instance!r} ({type(error.instance).__name__}); "
            f"it must be of type {error.validator_value}.{hint}"
        )
    description = error.schema.get("description", "")
    return f"key '{where}': {error.message}. {description}".strip()


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def validate_config(config: dict, schema_path: Path, source: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError on any problem."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    resolved = copy.deepcopy(config)
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(e.absolute_path))
    if errors:
        details = "\n  - ".join(_explain(e, schema) for e in errors)
        raise ConfigError(f"{source}: invalid configuration:\n  - {details}")
    _check_consistency(resolved, source)
    return resolved


def _check_consistency(cfg: dict, source: str) -> None:
    group, batch = cfg["rollout"]["group_size"], cfg["slow"]["batch_size"]
    if batch % group:
        raise ConfigError(
            f"{source}: slow.batch_size ({batch}) must be a multiple of rollout.group_size ({group}): "
            f"each optimiser step takes whole groups. Set slow.batch_size to e.g. "
            f"{group * max(1, batch // group)}."
        )
    data_file = cfg["tasks"]["data_file"]
    if data_file and not Path(data_file).is_file():
        raise ConfigError(
            f"{source}: tasks.data_file '{data_file}' does not exist (paths are relative to the "
            f"directory you run snakemake from). Fix the path or set tasks.data_file: null."
        )
    if data_file:
        _check_data_file(data_file, source)
    train = cfg["tasks"]["train"]
    if not data_file and train in cfg["tasks"]["ood"]:
        raise ConfigError(
            f"{source}: tasks.ood lists '{train}', the training task; out-of-domain families must differ "
            f"from tasks.train. Remove it from tasks.ood."
        )
    _check_fast(cfg, source)
    needed = problems_per_round(cfg)
    if needed > cfg["tasks"]["sizes"]["train"]:
        raise ConfigError(
            f"{source}: a round needs {needed} training problems (slow.steps_per_round × slow.batch_size "
            f"/ rollout.group_size) but tasks.sizes.train is {cfg['tasks']['sizes']['train']}. "
            f"Raise tasks.sizes.train or lower slow.steps_per_round."
        )


def _check_fast(cfg: dict, source: str) -> None:
    fast, reflection = cfg["fast"], cfg["reflection"]
    drawn = fast["anchors"] + fast["pareto_problems"]
    if drawn > cfg["tasks"]["sizes"]["train"] and not set(cfg["arms"]) <= {"rl"}:
        raise ConfigError(
            f"{source}: fast.anchors + fast.pareto_problems = {drawn} problems are drawn from the training "
            f"split, but tasks.sizes.train is {cfg['tasks']['sizes']['train']}. Raise tasks.sizes.train "
            f"or lower those two."
        )
    if reflection["backend"] == "openai":
        for key in ("base_url", "model"):
            if not reflection[key]:
                raise ConfigError(
                    f"{source}: reflection.backend is 'openai' but reflection.{key} is not set; set it "
                    f"(e.g. base_url: http://localhost:8000/v1) or use reflection.backend: local."
                )


def _check_data_file(data_file: str, source: str) -> None:
    """Read the user's problems once now, so a malformed row stops the run before any job."""
    from fst.tasks import load_user_problems

    try:
        load_user_problems(data_file)
    except ValueError as error:
        raise ConfigError(f"{source}: tasks.data_file: {error}") from None


def problems_per_round(cfg: dict) -> int:
    """Problems whose groups feed one round's T optimiser steps."""
    slow = cfg["slow"]
    return slow["steps_per_round"] * slow["batch_size"] // cfg["rollout"]["group_size"]
