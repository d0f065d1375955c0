"""`fst <stage>`: one subcommand per workflow stage, so any stage can be rerun by hand from its log.

Each stage reads its inputs, writes its outputs atomically and a provenance record beside them.
Heavy imports (torch, transformers, TRL) happen inside the stage functions and are timed there.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import psutil

from fst import warm
from fst.stages import evaluation, fast, plan, prepare, report, rollout, slow, tracking

log = logging.getLogger("fst")


def _since_process_start() -> float:
    """Seconds since this process began: since the fork for a child of the warm stage runner, else
    since the OS started it (to the clock tick; the boot time behind it is whole seconds)."""
    started = warm.forked_at or psutil.Process().create_time()
    return round(time.time() - started, 3)


# Arguments per stage: "name" a required string, "name:int" a required integer, "name?" optional,
# "name*" zero or more values, "name+" one or more.
_STAGES = {
    "config": (prepare.cmd_config, "configfile*"),
    "plan": (plan.cmd_plan, "configfile* config* device? json?"),
    "prepare-model": (prepare.cmd_prepare_model, "source dtype out provenance"),
    "tasks": (prepare.cmd_tasks, "task seed:int sizes data_file? source? out provenance"),
    "seed-population": (prepare.cmd_seed_population, "prompt out provenance"),
    "fast": (
        fast.cmd_fast,
        "arm round:int seed:int population_in policy base_model data settings gepa_dir "
        "previous_gepa_dir? out gepa_rollouts report provenance",
    ),
    "rollout": (rollout.cmd_rollout, "policy population data round:int seed:int settings out provenance"),
    "score": (rollout.cmd_score, "rollouts data out provenance"),
    "slow": (
        slow.cmd_slow,
        "scored policy_in base_model reference state_dir round:int settings out metrics provenance",
    ),
    "evaluate": (
        evaluation.cmd_evaluate,
        "policy population seed_population base_model data tasks* ood* after_rounds:int seed:int settings "
        "sample_cache? out samples provenance",
    ),
    "evaluate-test": (
        evaluation.cmd_evaluate_test,
        "evals+ policies+ populations+ data seed:int settings sample_cache? out samples provenance",
    ),
    "decompose": (
        evaluation.cmd_decompose,
        "policy base_model population seed_population data after_rounds:int seed:int settings "
        "sample_cache? out samples provenance",
    ),
    "track": (
        tracking.cmd_track,
        "eval population? slow_metrics? test? round_provenance* results_dir experiment point arm seed:int "
        "after_rounds:int params uri? out",
    ),
    "sync-tracking": (tracking.cmd_sync_tracking, "tracked+ files* results_dir experiment uri? out"),
    "summarize": (report.cmd_summarize, "evals+ tests* samples* round_provenance* out scores"),
    "report": (
        report.cmd_report,
        "experiment kinds summary? scores? plasticity_summary? plasticity_scores? continual_summary? "
        "continual_scores? decomposition* decomposition_samples* bootstrap_resamples:int "
        "bootstrap_seed:int posthoc_evals* posthoc_provenance* min_fit_points:int tables figures+ markdown",
    ),
}


def _add_argument(parser: argparse.ArgumentParser, spec: str) -> None:
    name, _, kind = spec.partition(":")
    options: dict = {"required": True}
    if name[-1] in "?*+":
        name, mark = name[:-1], name[-1]
        options = {"default": None} if mark == "?" else {"nargs": mark, "default": []}
        options["required"] = mark == "+"
    if kind == "int":
        options["type"] = int
    parser.add_argument(f"--{name.replace('_', '-')}", dest=name, **options)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fst", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, specs) in _STAGES.items():
        stage = sub.add_parser(name, help=func.__doc__.splitlines()[0])
        for spec in specs.split():
            _add_argument(stage, spec)
        stage.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> None:
    process_start = _since_process_start()
    first_process = os.environ.get("RANK", "0") == "0"  # the slow stage's other processes: warnings only
    logging.basicConfig(
        level=logging.INFO if first_process else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
    )
    args = _parser().parse_args(argv)
    args.process_start = process_start
    log.info("fst %s", " ".join(sys.argv[1:] if argv is None else argv))
    args.func(args)


if __name__ == "__main__":
    main()
