"""What a config will cost before it runs (`fst plan`): jobs (jobs), policy rollouts and reflection calls
(counts), tokens (tokens) and hours on a device (figures), printed by render.

The counts come from the code the workflow itself runs on: the runs of `fst.kinds.runs`, the sweep points
of `fst.sweep.resolve_points`, a run's GEPA rounds from `Run.runs_gepa`, and the job count from Snakemake's
own dry run (the real DAG). Policy rollouts, tokens and hours are upper bounds: every completion runs to
rollout.max_new_tokens, and no evaluation draw is shared through the sample cache (fst.sample_cache), which
in practice reuses many. Reflection calls are bounds of GEPA 0.1.4's loop, not forecasts. Hours divide
the tokens by the figures of benchmarks/throughput.yaml, each marked measured or estimate.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from fst.config import SCHEMA_PATH, layered_config, merged
from fst.kinds import runs
from fst.plan.counts import add_counts, run_counts
from fst.plan.figures import FIGURES_PATH, choose_device, estimate_hours, figures_model, load_figures
from fst.plan.jobs import PlanError, job_counts
from fst.plan.tokens import prompt_tokens, question_tokens, reflection_input_tokens, stage_tokens

__all__ = ["PlanError", "load_config", "make_plan", "point_configs", "point_plan"]

# the token estimates that add up over sweep points (the others are per prompt or per call)
SUMMED_TOKENS = ("policy_tokens", "reflection_input_tokens", "reflection_output_tokens", "stages")


def load_config(configfiles: list[Path], overrides: list[str] = ()) -> dict:
    """config/config.yaml, then `configfiles` in order, then `--config KEY=VALUE` entries (Snakemake's
    own parsing of them): the config a `snakemake --configfile ... --config ...` run sees."""
    config = layered_config(configfiles)
    if overrides:
        from snakemake.cli import parse_config

        config = merged(config, parse_config(list(overrides)))
    return config


def point_configs(config: dict, source: str) -> dict[str, dict]:
    """{sweep point: its validated config} (one point "default" without a sweep)."""
    from fst.sweep import resolve_points

    return resolve_points(config, SCHEMA_PATH, source)


def point_plan(cfg: dict) -> dict:
    """Counts (per run and in total over the runs and seeds) and token estimates of one sweep point."""
    per_run = {name: run_counts(run, cfg) for name, run in runs(cfg).items()}
    total: dict = {}
    for counts in per_run.values():
        add_counts(total, counts, len(cfg["seeds"]))
    question, unread = question_tokens(cfg)
    prompt, how = prompt_tokens(cfg, question, unread)
    reflection_in = reflection_input_tokens(cfg, question)
    tokens = {
        "prompt_tokens": prompt,
        "prompt_tokens_how": how,
        "policy_tokens": total["policy_rollouts_max"] * (prompt + cfg["rollout"]["max_new_tokens"]),
        "reflection_input_tokens_per_call": reflection_in,
        "reflection_input_tokens": total["reflection_calls"] * reflection_in,
        "reflection_output_tokens": total["reflection_calls"] * cfg["reflection"]["max_tokens"],
        "stages": stage_tokens(total, cfg, prompt),
    }
    return {"seeds": len(cfg["seeds"]), "runs": per_run, "total": total, "tokens": tokens}


def make_plan(configfiles: list[Path], overrides: list[str] = (), device: str | None = None,
              figures_path: Path = FIGURES_PATH, dry_run: bool = True) -> dict:
    """The plan of a config: per point and in total, with hours on `device` and the dry run's jobs."""
    source = ", ".join(map(str, configfiles)) or "config/config.yaml"
    points = point_configs(load_config(configfiles, overrides), source)
    first = next(iter(points.values()))
    per_point = {name: point_plan(cfg) for name, cfg in points.items()}
    total: dict = {}
    for point in per_point.values():
        add_counts(total, point["total"])
        add_counts(total, {key: point["tokens"][key] for key in SUMMED_TOKENS})
    models, figures = load_figures(figures_path)
    model = figures_model(first["model"]["source"], models)
    chosen = choose_device(first, model, figures, device)
    plan = {
        "config": source,
        "overrides": list(overrides),
        "experiment": first["experiment"],
        "model": first["model"]["source"],
        "device": chosen,
        "points": per_point,
        "total": total,
        "estimate": estimate_hours(total["stages"], first["model"]["source"], model, chosen, figures),
    }
    if dry_run:
        try:
            plan["jobs"] = job_counts(configfiles, overrides)
        except (PlanError, subprocess.TimeoutExpired) as error:
            plan["jobs"] = {"error": str(error)}
    return plan
