"""Config validation: schema (with defaults filled in) plus the checks a schema cannot express.

Runs when the Snakefile is parsed, so a bad config is rejected before any job starts, with a message
that names the file, the key and the fix.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path

import jsonschema
import yaml

# The schema is the one place defaults live; it sits in the repository beside the rules that use it.
REPO = Path(__file__).resolve().parents[2]  # the checkout: Snakefile, config/, benchmarks/
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"

# Keys that were removed, and why: a clearer message than "unknown key" for configs that still set them.
RETIRED_KEYS = {
    ("rollout", "top_p"): (
        "rollouts always sample the full distribution softmax(logits / rollout.temperature): the slow "
        "stage's trainer recomputes old log-probs at that temperature over the whole vocabulary, so "
        "rollouts sampled with nucleus truncation would be silently off-policy. Remove the key."
    ),
}


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


def default_config() -> dict:
    """The embedded default experiment: the schema's defaults, resolved."""
    return validate_config({}, SCHEMA_PATH, source="defaults")


def _check_retired(config: dict, source: str) -> None:
    for (section, key), why in RETIRED_KEYS.items():
        if key in (config.get(section) or {}):
            raise ConfigError(f"{source}: {section}.{key} is no longer a setting: {why}")


def validate_config(config: dict, schema_path: Path = SCHEMA_PATH, source: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in; raise ConfigError on any problem."""
    _check_retired(config, source)
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
    _check_slow_gpus(cfg, source)
    population = cfg["fast"]["population_size"]
    if "fst" in cfg["arms"] and group % population:
        divisor = max(k for k in range(1, population + 1) if group % k == 0)
        raise ConfigError(
            f"{source}: fast.population_size ({population}) must divide rollout.group_size ({group}): "
            f"arm fst spreads each group of G rollouts over the K prompts, G/K each. "
            f"Set fast.population_size to a divisor of {group} (e.g. {divisor})."
        )
    _check_model_source(cfg["model"]["source"], source)
    data_file = cfg["tasks"]["data_file"]
    if data_file and not Path(data_file).is_file():
        raise ConfigError(
            f"{source}: tasks.data_file '{data_file}' does not exist (paths are relative to the "
            f"directory you run snakemake from). Fix the path or set tasks.data_file: null."
        )
    if data_file:
        from fst.kinds.tasks import check_data_file

        check_data_file(data_file, "tasks.data_file", source, cfg)
    train = cfg["tasks"]["train"]
    _check_datasets(cfg, source)
    if not data_file and train in cfg["tasks"]["ood"]:
        raise ConfigError(
            f"{source}: tasks.ood lists '{train}', the training task; out-of-domain families must differ "
            f"from tasks.train. Remove it from tasks.ood."
        )
    _check_fast(cfg, source)
    _check_kinds(cfg, source)
    needed = problems_per_round(cfg)
    if needed > cfg["tasks"]["sizes"]["train"]:
        raise ConfigError(
            f"{source}: a round needs {needed} training problems (slow.steps_per_round × slow.batch_size "
            f"/ rollout.group_size) but tasks.sizes.train is {cfg['tasks']['sizes']['train']}. "
            f"Raise tasks.sizes.train or lower slow.steps_per_round."
        )


def _check_datasets(cfg: dict, source: str) -> None:
    """Published datasets named by tasks.train and tasks.ood can be read before any job (plasticity.task
    and continual.schedule entries are checked with their kinds)."""
    from fst.kinds.tasks import check_dataset
    from fst.tasks import DATASET_NAMES

    used = [] if cfg["tasks"]["data_file"] else [("tasks.train", cfg["tasks"]["train"])]
    used += [("tasks.ood", family) for family in cfg["tasks"]["ood"]]
    for key, family in used:
        if family in DATASET_NAMES:
            check_dataset(family, key, source, cfg)


def _check_slow_gpus(cfg: dict, source: str) -> None:
    """slow.gpus > 1: processes on GPUs of one node, each with whole groups of every step."""
    gpus, group, batch = cfg["slow"]["gpus"], cfg["rollout"]["group_size"], cfg["slow"]["batch_size"]
    if gpus == 1:
        return
    if cfg["model"]["device"] == "cpu":
        raise ConfigError(
            f"{source}: slow.gpus is {gpus} but model.device is 'cpu': the slow stage runs one process per "
            f"GPU. Set slow.gpus: 1 on the CPU, or model.device: auto (or cuda) on a node with {gpus} GPUs."
        )
    if batch % (gpus * group):
        fit = gpus * group * max(1, round(batch / (gpus * group)))
        raise ConfigError(
            f"{source}: slow.batch_size ({batch}) must be a multiple of slow.gpus × rollout.group_size "
            f"({gpus} × {group} = {gpus * group}): each of the {gpus} processes trains whole groups of every "
            f"step. Set slow.batch_size to e.g. {fit}, or change slow.gpus."
        )


def _check_model_source(model_source: str, source: str) -> None:
    """A local folder must exist now; `packaged:` names and hub ids (`org/name`) are resolved later."""
    if model_source.startswith("packaged:"):
        return
    path = Path(model_source).expanduser()
    looks_local = model_source.startswith(("/", ".", "~")) or model_source.count("/") != 1 or path.exists()
    if looks_local and not (path / "config.json").is_file():
        problem = (
            "does not exist"
            if not path.exists()
            else "has no config.json (not a Hugging Face model folder)"
        )
        raise ConfigError(
            f"{source}: model.source '{model_source}' {problem}. Give a local Hugging Face model folder "
            f"(paths are relative to the directory you run snakemake from), a hub id such as "
            f"HuggingFaceTB/SmolLM2-135M-Instruct (needs network), or packaged:smollm2."
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


def _check_kinds(cfg: dict, source: str) -> None:
    from fst.kinds import continual, plasticity

    if "plasticity" in cfg["kinds"]:
        plasticity.check(cfg, source)
    if "continual" in cfg["kinds"]:
        continual.check(cfg, source)


def problems_per_round(cfg: dict) -> int:
    """Problems whose groups feed one round's T optimiser steps."""
    slow = cfg["slow"]
    return slow["steps_per_round"] * slow["batch_size"] // cfg["rollout"]["group_size"]


def merged(base: dict, update: dict) -> dict:
    """Snakemake's way of layering config files: nested mappings merge, other values replace."""
    out = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if nested else value
    return out


def layered_config(configfiles: list[Path]) -> dict:
    """config/config.yaml, then `configfiles` in order: what `snakemake --configfile ...` reads."""
    config: dict = {}
    for path in [REPO / "config" / "config.yaml", *configfiles]:
        config = merged(config, yaml.safe_load(Path(path).read_text()) or {})
    return config


def show_config(configfiles: list[Path]) -> str:
    """The resolved configuration of config/config.yaml plus `configfiles`, as commented YAML."""
    source = ", ".join(map(str, configfiles)) or "config/config.yaml"
    resolved = validate_config(layered_config(configfiles), SCHEMA_PATH, source=source)
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    return f"# resolved from the schema's defaults and {source}\n" + "".join(_commented(resolved, schema, 0))


def _commented(values: dict, schema: dict, depth: int):
    import textwrap

    indent = "  " * depth
    for key, value in values.items():
        sub = schema.get("properties", {}).get(key, {})
        for line in textwrap.wrap(" ".join(sub.get("description", "").split()), 100 - len(indent)):
            yield f"{indent}# {line}\n"
        if isinstance(value, dict) and "properties" in sub:
            yield f"{indent}{key}:\n"
            yield from _commented(value, sub, depth + 1)
        else:
            if isinstance(value, list | dict):  # on one line, as JSON (which YAML reads)
                yield f"{indent}{key}: {json.dumps(value)}\n"
            else:
                yield indent + yaml.safe_dump({key: value}, width=10**6, allow_unicode=True)
