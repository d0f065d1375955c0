"""Kind plasticity: does training keep the weights able to learn something new? From each phase-A
starting point (the base model as control, and every weight-training arm's final main-run weights), a
fresh plain RL run (arm rl's rounds: the seed prompt, no fast channel, a new optimizer) on a phase-B
task. The phase-A prompt is dropped: phase B measures the weights alone."""

from __future__ import annotations

from fst.kinds.tasks import check_entry, task_name
from fst.tasks import FAMILY_NAMES

BASE = "base"
PREFIX = "plasticity-from-"


def inits(cfg: dict) -> list[str]:
    """The phase-B starting points: the base model, then each arm of the main runs that trains weights."""
    return [BASE, *(arm for arm in cfg["arms"] if arm != "gepa")]


def runs(cfg: dict) -> list:
    from fst.kinds import Run

    task = task_name(cfg, cfg["plasticity"]["task"])
    return [
        Run(f"{PREFIX}{init}", "plasticity", "rl", (task,), cfg["plasticity"]["rounds"],
            *((None, None) if init == BASE else (init, cfg["rounds"] - 1)))
        for init in inits(cfg)
    ]


def check(cfg: dict, source: str) -> None:
    """Refuse, before any job, a plasticity config that could not answer its question."""
    from fst.config import ConfigError
    from fst.kinds import main_task

    task = cfg["plasticity"]["task"]
    if not task:
        raise ConfigError(
            f"{source}: kinds lists 'plasticity' but plasticity.task is not set: name the phase-B task, a "
            f"task family ({', '.join(FAMILY_NAMES)}) or a data file, e.g. plasticity.task: claims."
        )
    check_entry(task, "plasticity.task", source, cfg)
    if task_name(cfg, task) == main_task(cfg):
        raise ConfigError(
            f"{source}: plasticity.task '{task}' is the task phase A trains on (tasks.train / "
            f"tasks.data_file): phase B must be a new task, or it measures more training, not plasticity. "
            f"Pick another task for plasticity.task."
        )
    if len(inits(cfg)) == 1:
        raise ConfigError(
            f"{source}: kinds lists 'plasticity' but arms ({', '.join(cfg['arms'])}) has no arm that trains "
            f"weights: phase B would only start from the base model. Add fst and/or rl to arms."
        )
