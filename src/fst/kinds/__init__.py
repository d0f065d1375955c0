"""Experiment kinds and the runs each one makes: every run is a chain of the same rounds (fast,
rollout, score, slow, evaluate), under a folder of its own below the sweep point.

- main: each arm on the training task (`<arm>/seed<k>`);
- plasticity: plain RL on a phase-B task from the base model and from each weight-training arm's final
  main-run weights (`plasticity-from-<init>/seed<k>`);
- continual: each arm over a task schedule in one uninterrupted run (`continual-<arm>/seed<k>`).

A run knows which task each of its rounds trains on and which tasks each evaluation scores; the
workflow's rules ask it, so no rule knows the kinds apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from fst.kinds.tasks import task_name


@dataclass(frozen=True)
class Run:
    """One run's shape: `name` is its folder under the sweep point (and its MLflow run's arm)."""

    name: str
    kind: str
    arm: str  # whose rounds it runs: fst | rl | gepa
    stages: tuple[str, ...]  # the task trained on in each stage, in order
    rounds_per_stage: int
    init: str | None = None  # the main-run arm whose final weights it starts from; None: the base model
    init_round: int | None = None  # the round of `init` whose output (its final weights) it starts from

    @property
    def rounds(self) -> int:
        return len(self.stages) * self.rounds_per_stage

    @property
    def trains_weights(self) -> bool:
        return self.arm != "gepa"

    def task(self, round_index: int) -> str:
        """The task round `round_index` trains on (a main rl run's post-hoc GEPA round, one past the last,
        on the last task)."""
        return self.stages[min(int(round_index) // self.rounds_per_stage, len(self.stages) - 1)]

    def task_after(self, k: int) -> str:
        """The current task after k rounds: the last trained round's (round 0's at k = 0)."""
        return self.task(max(int(k) - 1, 0))

    def runs_gepa(self, round_index: int, every: int, post_hoc: bool) -> bool:
        """Whether round `round_index` runs a GEPA round (else its fast stage passes Φ through): arm gepa
        every round; arm fst every `every` rounds of each stage, so a new task starts with one; a main
        rl run's round `rounds` (one past its last) when post-hoc GEPA on its final weights is asked."""
        round_index = int(round_index)
        if self.arm == "gepa":
            return True
        if self.arm == "fst":
            return round_index % self.rounds_per_stage % every == 0
        return post_hoc and self.kind == "main" and round_index == self.rounds

    def continues_gepa(self, round_index: int, every: int, post_hoc: bool) -> bool:
        """Whether round `round_index`'s GEPA round may continue the previous round's search: both run
        GEPA on the same task (the fast stage still checks weights, settings and Pareto set)."""
        r = int(round_index)
        return (r > 0 and self.runs_gepa(r, every, post_hoc) and self.runs_gepa(r - 1, every, post_hoc)
                and self.task(r) == self.task(r - 1))

    def other_tasks(self, k: int) -> list[str]:
        """The schedule's tasks an evaluation scores besides the current one (continual: forgetting)."""
        current = self.task_after(k)
        return [t for t in dict.fromkeys(self.stages) if t != current]


def main_task(cfg: dict) -> str:
    return task_name(cfg, cfg["tasks"]["data_file"]) if cfg["tasks"]["data_file"] else cfg["tasks"]["train"]


def runs(cfg: dict) -> dict[str, Run]:
    """{folder name: run} of every kind the config asks for, main runs first."""
    from fst.kinds import continual, plasticity

    made = []
    main_arms = cfg["arms"] if "main" in cfg["kinds"] else []
    if "plasticity" in cfg["kinds"]:  # phase A: the main runs of the arms that train weights
        main_arms = [arm for arm in cfg["arms"] if arm in main_arms or arm != "gepa"]
    made += [Run(arm, "main", arm, (main_task(cfg),), cfg["rounds"]) for arm in main_arms]
    if "plasticity" in cfg["kinds"]:
        made += plasticity.runs(cfg)
    if "continual" in cfg["kinds"]:
        made += continual.runs(cfg)
    return {run.name: run for run in made}
