"""The round's data for the slow stage: rollouts under the current policy and prompts, then scored."""

from __future__ import annotations

import json

from fst import artifacts
from fst.artifacts import Provenance
from fst.stages.engine import open_generation, resolve_runtime, sampling_settings


def cmd_rollout(args) -> None:
    """Rollout stage: G completions per problem of this round under θ_c and Φ_{c+1}."""
    from fst.data import load_split, round_problems
    from fst.population import load_population

    cfg = json.loads(args.settings)
    inputs = {"policy": args.policy, "population": args.population, "data": args.data}
    prov = Provenance("rollout", inputs, cfg, seed=args.seed)
    runtime = resolve_runtime(cfg, prov)
    generation = open_generation(args.policy, runtime, cfg, prov)
    problems = round_problems(load_split(args.data, "train"), args.seed, args.round, cfg["problems"])
    settings = sampling_settings(cfg)
    from fst.rollout import generate_rollouts

    with prov.timed("generate"):
        rows = generate_rollouts(
            generation.model,
            generation.tokenizer,
            problems,
            load_population(args.population),
            cfg["group_size"],
            settings,
            seed=args.seed * 1_000_003 + args.round,
            round_index=args.round,
            backend=runtime.backend,
            engine=generation.engine,
        )
    artifacts.write_parquet(rows, args.out)
    prov.count(
        rollouts=len(rows),
        completion_tokens=int(rows["completion_ids"].map(len).sum()),
        prompt_tokens=int(rows["prompt_ids"].map(len).sum()),
    )
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"rollouts": args.out})


def cmd_score(args) -> None:
    """Score stage: reward, components and feedback for every rollout."""
    import pandas as pd

    from fst.data import SPLITS, load_split
    from fst.reward import score_rollouts

    prov = Provenance("score", {"rollouts": args.rollouts, "data": args.data}, {})
    problems = {p.id: p for split in SPLITS for p in load_split(args.data, split)}
    scored = score_rollouts(pd.read_parquet(args.rollouts), problems)
    artifacts.write_parquet(scored, args.out)
    prov.count(rollouts=len(scored), correct=int((scored["reward"] > 0).sum()))
    prov.write(args.provenance, {"scored": args.out})
