"""Experiment kinds: the runs each kind makes, their tasks round by round, and bad input refused
before any job with the file, the key and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fst.config import ConfigError, default_config, validate_config
from fst.kinds import runs
from fst.kinds.tasks import task_files

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
SOURCE = "my-experiment.yaml"


def _resolved(**changes) -> dict:
    return validate_config(default_config() | changes, SCHEMA, source=SOURCE)


def _error(**changes) -> str:
    with pytest.raises(ConfigError) as info:
        _resolved(**changes)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}:"), message
    return message


def _user_file(path: Path, name: str) -> str:
    rows = [f'{{"question": "{name} {i} + 1?", "answer": "{i + 1}"}}' for i in range(80)]
    file = path / f"{name}.jsonl"
    file.write_text("\n".join(rows) + "\n")
    return str(file)


def test_the_default_experiment_is_the_main_runs_alone():
    made = runs(_resolved())
    assert list(made) == ["fst", "rl", "gepa"]
    assert {run.kind for run in made.values()} == {"main"}
    assert all(run.task(r) == "arithmetic" for run in made.values() for r in range(4))


def test_plasticity_starts_plain_rl_from_the_base_and_each_weight_training_arm():
    made = runs(_resolved(kinds=["plasticity"], plasticity={"task": "claims", "rounds": 4}))
    phase_b = {name: run for name, run in made.items() if run.kind == "plasticity"}
    assert set(made) - set(phase_b) == {"fst", "rl"}  # phase A runs, to start from
    assert {name: run.init for name, run in phase_b.items()} == {
        "plasticity-from-base": None, "plasticity-from-fst": "fst", "plasticity-from-rl": "rl"}
    assert {run.arm for run in phase_b.values()} == {"rl"}
    assert all(run.rounds == 4 and run.task(3) == "claims" for run in phase_b.values())
    # each starts from its phase-A run's final weights: the output of that run's last round
    assert {run.init_round for run in phase_b.values()} == {None, 2}  # rounds: 3 (the default)
    assert not any(run.runs_gepa(r, 1, True) for run in phase_b.values() for r in range(5))


def test_plasticity_alone_runs_only_the_phase_a_arms_it_starts_from():
    made = runs(_resolved(kinds=["plasticity"], plasticity={"task": "claims"}))
    assert [name for name, run in made.items() if run.kind == "main"] == ["fst", "rl"]


def test_a_continual_run_switches_task_every_n_rounds_and_evaluates_every_task():
    cfg = _resolved(kinds=["continual"], arms=["fst", "rl"],
                    continual={"schedule": ["arithmetic", "code_output", "claims"], "rounds_per_stage": 2})
    made = runs(cfg)
    assert list(made) == ["continual-fst", "continual-rl"]
    run = made["continual-fst"]
    assert run.rounds == 6
    assert [run.task(r) for r in range(6)] == ["arithmetic"] * 2 + ["code_output"] * 2 + ["claims"] * 2
    # after k rounds the current task is the last trained round's; every other task is scored too
    assert [run.task_after(k) for k in range(7)] == ["arithmetic"] * 3 + ["code_output"] * 2 + ["claims"] * 2
    assert run.other_tasks(2) == ["code_output", "claims"] and run.other_tasks(3) == ["arithmetic", "claims"]


def test_gepa_rounds_follow_the_task_a_new_stage_starts_a_search_and_its_rounds_continue_it():
    cfg = _resolved(kinds=["continual"], arms=["fst", "gepa"],
                    continual={"schedule": ["arithmetic", "claims"], "rounds_per_stage": 4})
    fst, gepa = runs(cfg)["continual-fst"], runs(cfg)["continual-gepa"]
    # fast.every 2: every other round of each stage, the first of a stage included
    assert [fst.runs_gepa(r, 2, False) for r in range(8)] == [True, False, True, False] * 2
    continued = [gepa.continues_gepa(r, 1, False) for r in range(8)]
    assert continued == [False, True, True, True] * 2  # the switch after round 3 starts afresh
    assert not any(fst.continues_gepa(r, 2, False) for r in range(8))  # a weights update in between


def test_only_a_main_rl_run_has_the_post_hoc_gepa_round():
    cfg = _resolved(kinds=["main", "continual"], continual={"schedule": ["arithmetic", "claims"]})
    made = runs(cfg)
    assert made["rl"].runs_gepa(3, 1, True) and not made["rl"].runs_gepa(3, 1, False)
    assert not made["continual-rl"].runs_gepa(made["continual-rl"].rounds, 1, True)


def test_a_continual_run_from_the_arithmetic_seed_prompt_is_warned_about():
    from fst.kinds.continual import seed_prompt_warning

    schedule = {"schedule": ["arithmetic", "claims"]}
    assert "prompts.seed" in seed_prompt_warning(_resolved(kinds=["continual"], continual=schedule))
    agnostic = _resolved(kinds=["continual"], continual=schedule, prompts={"seed": "Answer carefully."})
    assert seed_prompt_warning(agnostic) is None
    assert seed_prompt_warning(_resolved()) is None


def test_data_files_are_stages_with_task_names_of_their_own(tmp_path):
    first, second = _user_file(tmp_path, "first"), _user_file(tmp_path, "second")
    cfg = _resolved(kinds=["continual"], continual={"schedule": [first, "claims", second, first]})
    assert task_files(cfg) == {"user_1": first, "user_2": second}
    assert runs(cfg)["continual-rl"].stages == ("user_1", "claims", "user_2", "user_1")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"continual": {"schedule": ["arithmetic", "algebra"]}},
         r"continual.schedule\[1\] is 'algebra', neither a built-in task"),
        ({"continual": {"schedule": []}}, "continual.schedule is empty"),
        ({"continual": {"schedule": ["claims", "claims"]}}, "one task only"),
        ({"continual": {"schedule": ["arithmetic", "missing.jsonl"]}},
         "data file 'missing.jsonl' does not exist"),
        ({"continual": {"schedule": ["arithmetic"], "rounds_per_stage": 0}}, "rounds_per_stage"),
        ({"continual": {"schedule": ["arithmetic", ""]}}, r"continual.schedule.1.*(short|empty|minLength)"),
    ],
)
def test_a_bad_schedule_is_refused_before_any_job(changes, expected):
    message = _error(kinds=["continual"], **changes)
    assert re.search(expected, message), message


def test_a_plasticity_task_equal_to_phase_a_is_refused_with_the_reason():
    message = _error(kinds=["main", "plasticity"], plasticity={"task": "arithmetic"})
    assert "plasticity.task 'arithmetic' is the task phase A trains on" in message
    assert "Pick another task" in message


def test_a_data_file_too_short_for_the_splits_is_refused_before_any_job(tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(f'{{"question": "{i} + 1?", "answer": "{i + 1}"}}\n' for i in range(10)))
    message = _error(kinds=["continual"], continual={"schedule": ["arithmetic", str(short)]})
    assert "continual.schedule[1]" in message and "10 problems" in message and "tasks.sizes.val" in message


def test_a_plasticity_task_that_is_phase_as_data_file_spelt_otherwise_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _user_file(tmp_path, "mine")
    message = _error(kinds=["plasticity"], tasks={"data_file": "mine.jsonl"},
                     plasticity={"task": "./mine.jsonl"})
    assert "is the task phase A trains on" in message


def test_plasticity_needs_a_task_and_an_arm_that_trains_weights():
    assert "plasticity.task is not set" in _error(kinds=["plasticity"])
    message = _error(kinds=["plasticity"], arms=["gepa"], plasticity={"task": "claims"})
    assert "no arm that trains weights" in message
