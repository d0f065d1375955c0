"""The fast stage: a GEPA round on the system-prompt population, or the population unchanged."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fst import artifacts
from fst.artifacts import Provenance
from fst.stages.engine import open_generation, resolve_runtime

log = logging.getLogger("fst")


def cmd_fast(args) -> None:
    """Fast stage: a GEPA round (arm gepa; arm fst every N rounds), else the population unchanged."""
    import pandas as pd

    from fst.population import load_population, save_population

    cfg = json.loads(args.settings)
    inputs = {"population_in": args.population_in, "policy": args.policy, "data": args.data}
    prov = Provenance("fast", inputs, cfg, seed=args.seed)
    members = load_population(args.population_in)
    records, stats, usage = pd.DataFrame(), {"metric_calls": 0, "gepa_round": False}, {}
    if cfg["gepa_round"]:
        members, stats, records, usage = _gepa_round(args, cfg, members, prov)
    save_population(members, args.out, args.round)
    artifacts.write_parquet(records, args.gepa_rollouts)
    artifacts.write_json({"stats": stats, "reflection_usage": usage}, args.report)
    prov.count(
        members=len(members),
        # every metric call made in this round (calls of a continued search's earlier rounds are
        # charged to those rounds): the policy rollouts the summary charges, each one exactly once
        metric_calls=stats["metric_calls"],
        rescoring_calls=stats.get("rescoring_calls", 0),
        metric_calls_not_counted_by_gepa=stats.get("uncounted_calls", 0),
        reflection_calls=usage.get("calls", 0),
        reflection_prompt_tokens=usage.get("prompt_tokens", 0),
        reflection_completion_tokens=usage.get("completion_tokens", 0),
        proposals_accepted=stats.get("proposals_accepted", 0),
        proposals_rejected_unparseable=stats.get("proposals_rejected_unparseable", 0),
    )
    if cfg["gepa_round"]:
        kept = ("continued_from", "calls_before", "gepa_metric_calls", "max_metric_calls", "proposer")
        prov.record["gepa"] = {key: stats[key] for key in kept} | {"run_dir": args.gepa_dir}
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"population": args.out, "gepa_rollouts": args.gepa_rollouts})


def _gepa_round(args, cfg: dict, members, prov: Provenance):
    """One GEPA round on `members`: (population, stats, the round's rollout records, reflection usage)."""
    from fst.data import load_split
    from fst.fast import (
        FastSettings,
        GuardedReflection,
        PolicyAdapter,
        anchor_and_pareto_sets,
        records_frame,
        run_fast_round,
    )
    from fst.generation import SamplingSettings
    from fst.reflection import ReflectionError, describe, make_reflection_lm

    fast = cfg["fast"]
    runtime = resolve_runtime(cfg, prov)
    generation = open_generation(args.policy, runtime, cfg, prov)
    anchors, pareto = anchor_and_pareto_sets(
        load_split(args.data, "train"), args.seed, args.round, fast["anchors"], fast["pareto_problems"]
    )
    seed = args.seed * 1_000_003 + 700_000 + args.round
    # the frozen base weights are loaded once: arm gepa's policy is the base model itself
    policy_is_base = Path(args.policy).resolve() == Path(args.base_model).resolve()
    lm = make_reflection_lm(
        cfg["reflection"], Path(args.base_model), seed=seed, dtype=runtime.dtype, device=runtime.device,
        base_model=generation.model if policy_is_base else None,
    )
    prov.record["reflection"] = describe(lm)
    reflection = GuardedReflection(lm)
    adapter = PolicyAdapter(
        generation.model, generation.tokenizer, SamplingSettings(**cfg["sampling"]), seed, generation.engine
    )
    settings = FastSettings(
        fast["budget"], fast["population_size"], fast["reflection_minibatch_size"], seed, fast["proposer"]
    )
    previous = Path(args.previous_gepa_dir) if args.previous_gepa_dir else None
    with prov.timed("gepa"):
        # A retried round resumes its GEPA state, and a round continues the previous round's search,
        # only if the policy files (their sha256), reflection and sampling settings are unchanged.
        identity = json.dumps([prov.record["inputs"]["policy"]["sha256"], cfg["reflection"], cfg["sampling"]])
        population, stats = run_fast_round(
            adapter, reflection, members, anchors, pareto, Path(args.gepa_dir), args.round, settings,
            identity, previous,
        )  # fmt: skip
    usage = lm.usage.as_dict()
    if reflection.unavailable:
        raise ReflectionError(
            f"GEPA round {args.round} stopped: reflection backend {lm!r} failed: {lm.last_error} "
            f"Its state is kept in {args.gepa_dir}; "
            "rerun the workflow once the reflection backend is reachable, and the round resumes."
        )
    stats["gepa_round"] = True
    stats["reflection_seconds"] = usage["seconds"]
    log.info("GEPA round %d: %s", args.round, stats)
    return population, stats, records_frame(Path(args.gepa_dir), args.seed, runtime.backend), usage
