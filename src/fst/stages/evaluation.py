"""Where a run stands: validation at each evaluation point, the held-out test split, the decomposition."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from fst import artifacts
from fst.artifacts import Provenance
from fst.stages.engine import load_model, opened, resolve_runtime, sampling_settings

log = logging.getLogger("fst")


def _bootstrap(cfg: dict):
    """The percentile-bootstrap settings of an evaluation stage's settings JSON."""
    from fst.evaluate import Bootstrap

    return Bootstrap(cfg["bootstrap_resamples"], cfg["bootstrap_seed"])


def _sample_cache(args, cfg: dict, runtime, prov: Provenance):
    """The shared samples (`--sample-cache`; without it the stage computes everything itself)."""
    from fst.sample_cache import SampleCache, runtime_identity

    vllm = {**(cfg.get("vllm") or {}), "max_lora_rank": cfg.get("max_lora_rank")}
    return SampleCache(args.sample_cache, runtime_identity(runtime, vllm), prov, str(args.provenance))


def cmd_evaluate(args) -> None:
    """Evaluation stage: validation mean@k (of every task of a continual schedule), KL to the base
    model, out-of-domain accuracy."""
    import pandas as pd

    from fst.data import load_split
    from fst.evaluate import evaluate, evaluation_seed, token_kl_per_completion
    from fst.policy import load_policy
    from fst.population import best_member, load_population
    from fst.sample_cache import weights_key
    from fst.tasks.splits import frame_to_problems

    cfg = json.loads(args.settings)
    inputs = {
        "policy": args.policy,
        "population": args.population,
        "seed_population": args.seed_population,
        "data": args.data,
    }
    inputs |= {f"task_data_{i}": path for i, path in enumerate(args.tasks)}
    prov = Provenance("evaluate", inputs, cfg, seed=args.seed)
    runtime = resolve_runtime(cfg, prov)
    ood = {}
    for path in args.ood:
        frame = pd.read_parquet(path)
        problems = frame_to_problems(frame[frame["split"] == "val"])[: cfg["ood_problems"]]
        if problems:
            ood[problems[0].task] = problems
    others = {problems[0].task: problems for problems in map(partial(load_split, split="val"), args.tasks)}
    cache = _sample_cache(args, cfg, runtime, prov)
    with opened(args.policy, runtime, cfg, prov, cache) as generation:
        models = []  # (policy, base) for the KL, loaded at the first KL the cache lacks

        def kl_sums(samples):
            if not models:  # sampling is done: a vLLM engine closes first
                opened_model = generation.generation.model if generation.generation else None
                if opened_model is None:
                    generation.close()
                    opened_model, _ = load_model(args.policy, runtime, prov)
                with prov.timed("base_model_load"):
                    base, _ = load_policy(Path(args.base_model), runtime.dtype, runtime.device)
                models.extend([opened_model, base])
            return token_kl_per_completion(*models, samples, cfg["temperature"])

        policy_is_base = Path(args.policy).resolve() == Path(args.base_model).resolve()
        kl = None if policy_is_base else cache.kl_sums(
            generation.weights, weights_key(Path(args.base_model)), cfg["temperature"], kl_sums
        )
        with prov.timed("generate_and_score"):
            table, samples = evaluate(
                generation.engine,
                generation.tokenizer,
                kl,
                load_split(args.data, "val"),
                best_member(load_population(args.population)),
                best_member(load_population(args.seed_population)),
                ood,
                cfg["k"],
                sampling_settings(cfg),
                seed=evaluation_seed(args.seed),
                bootstrap=_bootstrap(cfg),
                other_tasks=others,
            )
    table.insert(0, "after_rounds", args.after_rounds)
    artifacts.write_parquet(table, args.out)
    artifacts.write_parquet(samples, args.samples)
    prov.count(eval_rollouts=len(samples))
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"eval": args.out, "samples": args.samples})
    for row in table.itertuples():
        log.info("%s %s %s = %.4f (n=%d)", row.task, row.setting, row.metric, row.value, row.n)


def cmd_evaluate_test(args) -> None:
    """Test stage: held-out test mean@k at the final round and at the round validation selects."""
    import pandas as pd

    from fst.data import load_split
    from fst.evaluate import evaluate_test, evaluation_seed, select_round
    from fst.population import best_member, load_population

    cfg = json.loads(args.settings)
    if not len(args.evals) == len(args.policies) == len(args.populations):
        raise SystemExit("evaluate-test: one policy and one population per validation evaluation")
    states = {}  # after_rounds -> (validation mean@k, policy, population)
    for eval_path, policy, population in zip(args.evals, args.policies, args.populations, strict=True):
        table = pd.read_parquet(eval_path)
        (value,) = table[table["metric"] == f"mean@{cfg['k']}"]["value"]
        states[int(table["after_rounds"].iloc[0])] = (float(value), policy, population)
    final = max(states)
    chosen = {"final": final, "selected": select_round({r: v for r, (v, _, _) in states.items()})}
    inputs = {"data": args.data} | {f"eval_after{r}": Path(args.evals[i]) for i, r in enumerate(states)}
    inputs |= {f"policy_after{r}": states[r][1] for r in sorted(set(chosen.values()))}
    inputs |= {f"population_after{r}": states[r][2] for r in sorted(set(chosen.values()))}
    prov = Provenance("evaluate_test", inputs, cfg, seed=args.seed)
    test = load_split(args.data, "test")
    runtime = resolve_runtime(cfg, prov)
    cache = _sample_cache(args, cfg, runtime, prov)
    rows, frames, done = [], [], {}
    for selection, after in chosen.items():
        if after not in done:
            _, policy, population = states[after]
            with (
                opened(policy, runtime, cfg, prov, cache) as generation,
                prov.timed(f"generate_and_score_after{after}"),
            ):
                done[after] = evaluate_test(
                    generation.engine,
                    generation.tokenizer,
                    test,
                    best_member(load_population(population)),
                    cfg["k"],
                    sampling_settings(cfg),
                    evaluation_seed(args.seed),
                    _bootstrap(cfg),
                )
            frames.append(done[after][1].assign(after_rounds=after))
        table = done[after][0].assign(
            selection=selection, after_rounds=after, split="test", val_value=states[after][0]
        )
        rows.append(table)
        log.info("test %s (after %d rounds): %.4f", selection, after, table["value"].iloc[0])
    first = ["selection", "after_rounds", "split"]
    table = pd.concat(rows, ignore_index=True)
    artifacts.write_parquet(table[first + [c for c in table.columns if c not in first]], args.out)
    samples = pd.concat(frames, ignore_index=True)
    artifacts.write_parquet(samples, args.samples)
    prov.count(eval_rollouts=len(samples))
    prov.record["selected_after_rounds"] = chosen["selected"]
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"test": args.out, "samples": args.samples})


def cmd_decompose(args) -> None:
    """Channel decomposition: {base, trained} weights x {seed, evolved} prompt, validation mean@k."""
    from fst.data import load_split
    from fst.evaluate import channel_decomposition, evaluation_seed
    from fst.policy import load_tokenizer
    from fst.population import best_member, load_population

    cfg = json.loads(args.settings)
    inputs = {
        "policy": args.policy,
        "base_model": args.base_model,
        "population": args.population,
        "seed_population": args.seed_population,
        "data": args.data,
    }
    prov = Provenance("decompose", inputs, cfg, seed=args.seed)
    runtime = resolve_runtime(cfg, prov)
    cache = _sample_cache(args, cfg, runtime, prov)

    def engine_on(policy):
        @contextmanager
        def engine_opened():
            with opened(policy, runtime, cfg, prov, cache) as generation:
                yield generation.engine

        return engine_opened

    prompts = {
        "seed": best_member(load_population(args.seed_population)),
        "evolved": best_member(load_population(args.population)),
    }
    settings = sampling_settings(cfg)
    with prov.timed("generate_and_score"):
        table, samples = channel_decomposition(
            {"base": engine_on(args.base_model), "trained": engine_on(args.policy)},
            load_tokenizer(Path(args.policy)),
            load_split(args.data, "val"),
            prompts,
            cfg["k"],
            settings,
            seed=evaluation_seed(args.seed),
            bootstrap=_bootstrap(cfg),
        )
    table.insert(0, "after_rounds", args.after_rounds)
    artifacts.write_parquet(table, args.out)
    artifacts.write_parquet(samples, args.samples)
    prov.count(eval_rollouts=len(samples))
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"decomposition": args.out, "samples": args.samples})
