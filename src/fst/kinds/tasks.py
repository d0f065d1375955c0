"""Task names of the data files a config uses: the workflow builds one data file per task name."""

from __future__ import annotations

from pathlib import Path

from fst.tasks import TASK_NAMES


def is_file_entry(entry: str) -> bool:
    """A task entry that names a data file rather than a built-in family."""
    return entry not in TASK_NAMES and Path(entry).suffix in (".jsonl", ".parquet")


def task_files(cfg: dict) -> dict[str, str]:
    """{task name: the user data file it is built from}: "user" for tasks.data_file, then "user_<n>" for
    each other file of plasticity.task and continual.schedule, in order of first appearance."""
    files = {"user": cfg["tasks"]["data_file"]} if cfg["tasks"]["data_file"] else {}
    entries = [cfg["plasticity"]["task"] or "", *cfg["continual"]["schedule"]]
    for entry in filter(is_file_entry, entries):
        if entry not in files.values():
            files[f"user_{sum(name != 'user' for name in files) + 1}"] = entry
    return files


def task_name(cfg: dict, entry: str) -> str:
    """The task name of a config entry: a built-in family's own, a data file's from task_files."""
    if not is_file_entry(entry):
        return entry
    return next(name for name, path in task_files(cfg).items() if path == entry)


def check_entry(entry: str, key: str, source: str) -> None:
    """A task entry is a built-in family or an existing, well-formed data file."""
    from fst.config import ConfigError
    from fst.tasks import load_user_problems

    if entry in TASK_NAMES:
        return
    if not is_file_entry(entry):
        raise ConfigError(
            f"{source}: {key} is '{entry}', neither a built-in task ({', '.join(TASK_NAMES)}) nor a data "
            f"file (.jsonl or .parquet, see docs/data-format.md). Use one of those."
        )
    if not Path(entry).is_file():
        raise ConfigError(
            f"{source}: {key}: data file '{entry}' does not exist (paths are relative to the directory you "
            f"run snakemake from). Fix the path."
        )
    try:
        load_user_problems(entry, "user_check")
    except ValueError as error:
        raise ConfigError(f"{source}: {key}: {error}") from None
