"""Sweep points: the `sweep:` grid of a config expanded into resolved configs, one per point.

A point's folder name is its `key~value` segments joined by "/", Snakemake's Paramspace layout
(e.g. `slow.learning_rate~0.0001/rollout.group_size~8`). Paramspace itself does not fit: it takes
column names as wildcard and namedtuple field names, and dotted config keys are neither.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from fst.config import ConfigError, validate_config

DEFAULT_POINT = "default"
SWEEPABLE_SECTIONS = ("prompts", "fast", "reflection", "rollout", "slow", "evaluation")
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")


def _schema_leaf(schema: dict, key: str) -> dict | None:
    """The schema of the config leaf named by a dotted key, or None if there is no such key."""
    node = schema
    for part in key.split("."):
        node = node.get("properties", {}).get(part)
        if node is None:
            return None
    return None if node.get("type") == "object" else node


def _leaf_keys(schema: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, sub in schema.get("properties", {}).items():
        keys += _leaf_keys(sub, f"{prefix}{name}.") if sub.get("type") == "object" else [f"{prefix}{name}"]
    return keys


def _check_key(key: str, values: Any, schema: dict, source: str) -> None:
    where = f"{source}: sweep key '{key}'"
    if key.split(".")[0] not in SWEEPABLE_SECTIONS or _schema_leaf(schema, key) is None:
        sweepable = [k for k in _leaf_keys(schema) if k.split(".")[0] in SWEEPABLE_SECTIONS]
        close = difflib.get_close_matches(key, sweepable, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{where} is not a config key that can be swept.{hint} Use the dotted name of a setting under "
            f"{', '.join(SWEEPABLE_SECTIONS)} (e.g. slow.learning_rate); arms and seeds are lists of "
            f"their own, and model, tasks, datasets, rounds and tracking are shared by all points."
        )
    if not values:
        raise ConfigError(f"{where} has an empty list of values: give at least one value or remove the key.")
    for value in values:
        if isinstance(value, Mapping | list):
            raise ConfigError(
                f"{where}: each value must be a single number, string or boolean, not {value!r}."
            )


def _folder_value(key: str, value: Any, index: int) -> str:
    """How a value appears in the point's folder name (`v<index>` if the text is not path-safe)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if _SAFE_VALUE.match(text) else f"v{index}"


def _with_values(config: dict, values: Mapping[str, Any]) -> dict:
    point = copy.deepcopy(config)
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = point
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return point


def point_name(values: Mapping[str, Any], indices: Mapping[str, int]) -> str:
    if not values:
        return DEFAULT_POINT
    return "/".join(f"{key}~{_folder_value(key, value, indices[key])}" for key, value in values.items())


def resolve_points(config: dict, schema_path: Path, source: str = "config") -> dict[str, dict]:
    """{point name: fully resolved config} for every point of the grid (one "default" point if none).

    Every point's config goes through the whole validation, so a swept value that breaks a cross-key
    rule (e.g. a batch size that is not a multiple of a swept group size) is named before any job.
    """
    sweep = config.get("sweep") or {}
    if not sweep:
        return {DEFAULT_POINT: validate_config(config, schema_path, source)}
    schema = yaml.safe_load(Path(schema_path).read_text())
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"{source}: sweep must be a mapping of dotted config keys to lists of values.")
    for key, values in sweep.items():
        if not isinstance(values, list):
            raise ConfigError(f"{source}: sweep key '{key}' must map to a list of values, not {values!r}.")
        _check_key(key, values, schema, source)
    points = {}
    for combination in itertools.product(*(list(enumerate(v)) for v in sweep.values())):
        indices = dict(zip(sweep, (i for i, _ in combination), strict=True))
        values = dict(zip(sweep, (v for _, v in combination), strict=True))
        name = point_name(values, indices)
        if name in points:
            raise ConfigError(
                f"{source}: sweep values give the folder name '{name}' twice; remove the duplicate."
            )
        points[name] = validate_config(
            _with_values(config, values), schema_path, f"{source} (sweep point {name})"
        )
    return points


def swept_values(config: dict) -> dict[str, Any]:
    """The values a resolved point config takes for each swept key (empty without a sweep)."""
    result = {}
    for key in config.get("sweep") or {}:
        node = config
        for part in key.split("."):
            node = node[part]
        result[key] = node
    return result
