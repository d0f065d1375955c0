"""Kind continual: one uninterrupted run per arm over a task schedule, switching task every
continual.rounds_per_stage rounds. The weights, the optimizer and the prompt population carry over the
switches; GEPA's anchors and Pareto set follow the current task (a new task starts a fresh search), and
every evaluation scores every task of the schedule, so forgetting of earlier tasks shows."""

from __future__ import annotations

from fst.kinds.tasks import check_entry, task_name

PREFIX = "continual-"


def schedule(cfg: dict) -> tuple[str, ...]:
    """The schedule as task names (a data file's as in fst.kinds.tasks.task_files)."""
    return tuple(task_name(cfg, entry) for entry in cfg["continual"]["schedule"])


def runs(cfg: dict) -> list:
    from fst.kinds import Run

    stages, per_stage = schedule(cfg), cfg["continual"]["rounds_per_stage"]
    return [Run(f"{PREFIX}{arm}", "continual", arm, stages, per_stage) for arm in cfg["arms"]]


def seed_prompt_warning(cfg: dict) -> str | None:
    """A warning when a continual run starts every task from the schema's default seed prompt (written
    for arithmetic): the fast channel starts there on every task of the schedule."""
    from fst.config import default_config

    if "continual" in cfg["kinds"] and cfg["prompts"]["seed"] == default_config()["prompts"]["seed"]:
        return ("kind continual runs with the default seed prompt, written for arithmetic: every task of "
                "the schedule starts from it. Set a task-agnostic prompts.seed (see "
                "config/experiments/continual.yaml).")
    return None


def check(cfg: dict, source: str) -> None:
    """Refuse, before any job, a schedule that names no task or an unknown one."""
    from fst.config import ConfigError

    entries = cfg["continual"]["schedule"]
    if not entries:
        raise ConfigError(
            f"{source}: kinds lists 'continual' but continual.schedule is empty: list the tasks in order, "
            f"e.g. continual.schedule: [arithmetic, code_output, claims]."
        )
    for index, entry in enumerate(entries):
        check_entry(entry, f"continual.schedule[{index}]", source, cfg)
    if len(set(entries)) == 1:
        raise ConfigError(
            f"{source}: continual.schedule has one task only ('{entries[0]}'): there is no switch to learn "
            f"through. List at least two tasks, or run kind main on it."
        )
