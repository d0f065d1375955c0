"""Task names of the data files a config uses: the workflow builds one data file per task name."""

from __future__ import annotations

import contextvars
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fst.tasks import DATASET_NAMES, FAMILY_NAMES, TASK_NAMES


def is_file_entry(entry: str) -> bool:
    """A task entry that names a data file rather than a built-in family."""
    return entry not in FAMILY_NAMES and Path(entry).suffix in (".jsonl", ".parquet")


def same_file(a: str, b: str) -> bool:
    """Two spellings of one data file (./x.jsonl, x.jsonl)."""
    return Path(a).resolve() == Path(b).resolve()


def task_files(cfg: dict) -> dict[str, str]:
    """{task name: the user data file it is built from}: "user" for tasks.data_file, then "user_<n>" for
    each other file of plasticity.task and continual.schedule, in order of first appearance."""
    files = {"user": cfg["tasks"]["data_file"]} if cfg["tasks"]["data_file"] else {}
    entries = [cfg["plasticity"]["task"] or "", *cfg["continual"]["schedule"]]
    for entry in filter(is_file_entry, entries):
        if not any(same_file(entry, known) for known in files.values()):
            files[f"user_{sum(name != 'user' for name in files) + 1}"] = entry
    return files


def task_name(cfg: dict, entry: str) -> str:
    """The task name of a config entry: a built-in family's own, a data file's from task_files."""
    if not is_file_entry(entry):
        return entry
    return next(name for name, path in task_files(cfg).items() if same_file(path, entry))


def check_entry(entry: str, key: str, source: str, cfg: dict) -> None:
    """A task entry is a built-in family or an existing, well-formed data file."""
    from fst.config import ConfigError

    if entry in TASK_NAMES:
        return
    if entry in DATASET_NAMES:
        check_dataset(entry, key, source, cfg)
        return
    if not is_file_entry(entry):
        raise ConfigError(
            f"{source}: {key} is '{entry}', neither a built-in task ({', '.join(FAMILY_NAMES)}) nor a data "
            f"file (.jsonl or .parquet, see docs/data-format.md). Use one of those."
        )
    if not Path(entry).is_file():
        raise ConfigError(
            f"{source}: {key}: data file '{entry}' does not exist (paths are relative to the directory you "
            f"run snakemake from). Fix the path."
        )
    check_data_file(entry, key, source, cfg)


def check_data_file(path: str, key: str, source: str, cfg: dict) -> None:
    """Read the user's problems once now and split them as the tasks stage will, so that a malformed
    row, or a file too short for tasks.sizes, stops the run before any job."""
    from fst.config import ConfigError
    from fst.data import split_user_problems
    from fst.tasks import load_user_problems

    try:
        problems = load_user_problems(path, "user_check")
        split_user_problems(problems, cfg["tasks"]["seed"], cfg["tasks"]["sizes"], path)
    except ValueError as error:
        raise ConfigError(f"{source}: {key}: {error}") from None


# Whether check_dataset reads the sources (files, the hub). Off where a job re-reads the workflow on a
# cluster node: the main process has checked them, and a node may have neither the files nor network.
_reading_sources = contextvars.ContextVar("reading_sources", default=True)
_sources_read: set[tuple[str, ...]] = set()  # (family, its config block, cwd) found readable here


@contextmanager
def source_checks(enabled: bool) -> Iterator[None]:
    token = _reading_sources.set(enabled)
    try:
        yield
    finally:
        _reading_sources.reset(token)


def check_dataset(family: str, key: str, source: str, cfg: dict) -> None:
    """A published dataset's family (`key` uses it): its source is named and can be read from here, and
    its first row has the family's columns (a hub dataset not yet downloaded: that it can be reached).
    Each source is read once per process, however many keys and sweep points name it."""
    from fst.config import ConfigError

    spec = cfg["datasets"][family]
    block = f"datasets.{family}"
    if not spec["path"] and not spec["hub"]:
        raise ConfigError(
            f"{source}: {key} is '{family}', a published dataset, but {block} names no source. Set "
            f"{block}.path to a local file or folder in the dataset's column layout, or {block}.hub to a "
            f"Hugging Face dataset id (docs/paper-tasks.md)."
        )
    seen = (family, json.dumps(spec, sort_keys=True), os.getcwd())
    if _reading_sources.get() and seen not in _sources_read:
        _check_source(family, spec, source)
        _sources_read.add(seen)


def _check_source(family: str, spec: dict, source: str) -> None:
    from fst.config import ConfigError
    from fst.tasks import get_dataset, sources

    block = f"datasets.{family}"
    if spec["path"] and not Path(spec["path"]).exists():
        raise ConfigError(
            f"{source}: {block}.path '{spec['path']}' does not exist (paths are relative to the directory "
            f"you run snakemake from). Fix the path."
        )
    if spec.get("evidence") and not Path(spec["evidence"]).is_file():
        raise ConfigError(f"{source}: {block}.evidence '{spec['evidence']}' does not exist. Fix the path.")
    try:
        found = sources.cached_files(spec)
    except FileNotFoundError as error:
        raise ConfigError(f"{source}: {block}: {error}. Point it at the dataset's data files.") from None
    if found is None:
        if reason := sources.hub_unreachable(spec):
            raise ConfigError(
                f"{source}: {block}.hub: the dataset '{spec['hub']}' cannot be read: {reason}. Download it "
                f"where there is network (hf download {spec['hub']} --repo-type dataset --local-dir "
                f"data/{family}) and set {block}.path: data/{family}, or run where the hub can be reached."
            )
        return
    family_task = get_dataset(family)
    try:  # the first row read and made into problems as the data job will (columns, values, evidence)
        where, row = sources.first_row(found[1][0])
        if problem := sources.missing_columns(row, family_task.columns, where, family):
            raise ValueError(problem)
        family_task.problems(row, where, spec)
    except (ValueError, OSError) as error:  # OSError: an unreadable file; Arrow's errors are ValueErrors
        raise ConfigError(f"{source}: {block}: {error}") from None
