"""`fst <stage>`: one subcommand per workflow stage, so any stage can be rerun by hand from its log.

Each stage reads its inputs, writes its outputs atomically and a provenance record beside them.
Heavy imports (torch, transformers, TRL) happen inside the stage functions and are timed there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psutil

from fst import artifacts
from fst.artifacts import Provenance

log = logging.getLogger("fst")


def _json(text: str):
    return json.loads(text)


def _since_process_start() -> float:
    return round(time.time() - psutil.Process().create_time(), 3)


def cmd_prepare_model(args) -> None:
    """Base model stage: the configured source as a plain Hugging Face folder."""
    from fst.model import prepare_base_model

    prov = Provenance("prepare_model", {}, {"source": args.source, "dtype": args.dtype})
    with prov.timed("model_load_and_save"):
        record = prepare_base_model(args.source, args.out, args.dtype)
    prov.count(parameters=record["parameters"])
    prov.write(args.provenance, {"model": args.out})


def cmd_tasks(args) -> None:
    """Task stage: one family's (or the user's) problems split into train/val/test."""
    from fst.data import build_task_data

    sizes = _json(args.sizes)
    prov = Provenance(
        "tasks",
        {"data_file": args.data_file} if args.data_file else {},
        {"task": args.task, "seed": args.seed, "sizes": sizes},
        seed=args.seed,
    )
    frame = build_task_data(args.task, args.seed, sizes, args.data_file)
    artifacts.write_parquet(frame, args.out)
    prov.count(**{f"problems_{k}": int(v) for k, v in frame["split"].value_counts().items()})
    prov.write(args.provenance, {"data": args.out})


def cmd_seed_population(args) -> None:
    """Write Φ_0: the seed system prompt as a one-member population."""
    from fst.population import save_population, seed_population

    prov = Provenance("seed_population", {}, {"prompt": args.prompt})
    save_population(seed_population(args.prompt), args.out, 0)
    prov.write(args.provenance, {"population": args.out})


def cmd_fast(args) -> None:
    """Fast stage: a GEPA round (arm gepa; arm fst every N rounds), else the population unchanged."""
    import pandas as pd

    from fst.population import load_population, save_population

    cfg = _json(args.settings)
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
    runtime = _runtime(cfg, prov)
    generation = _generation(args.policy, runtime, cfg, prov)
    anchors, pareto = anchor_and_pareto_sets(
        load_split(args.data, "train"), args.seed, args.round, fast["anchors"], fast["pareto_problems"]
    )
    seed = args.seed * 1_000_003 + 700_000 + args.round
    lm = make_reflection_lm(cfg["reflection"], Path(args.base_model), seed=seed, dtype=runtime.dtype,
                            device=runtime.device)
    prov.record["reflection"] = describe(lm)
    reflection = GuardedReflection(lm)
    adapter = PolicyAdapter(generation.model, generation.tokenizer, SamplingSettings(**cfg["sampling"]), seed,
                            generation.engine)
    settings = FastSettings(fast["budget"], fast["population_size"], fast["reflection_minibatch_size"], seed,
                            fast["proposer"])
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


def _sampling_settings(cfg: dict):
    """The generation settings of a stage's settings JSON (rollout, evaluation, decomposition)."""
    from fst.generation import SamplingSettings

    return SamplingSettings(cfg["max_new_tokens"], cfg["temperature"], cfg["batch_size"])


def _runtime(cfg: dict, prov: Provenance):
    """The stage's device, dtype and generation engine on this machine (recorded in its provenance)."""
    from fst import device

    runtime = device.resolve(cfg["device"], cfg["dtype"], cfg["backend"], where="model stage")
    prov.record["runtime"] = device.describe(runtime)
    log.info("computing on %s in %s, generation with %s", runtime.device, runtime.dtype, runtime.backend)
    return runtime


@dataclass
class Generation:
    """A stage's sampling engine on one policy: `engine(tokenizer, prompts, settings, seed)`.

    `model` is the transformers policy (None when vLLM samples); `close()` gives the GPU memory back.
    """

    model: object | None
    tokenizer: object
    engine: Callable
    close: Callable[[], None]


def _generation(policy: str, runtime, cfg: dict, prov: Provenance) -> Generation:
    """The resolved backend's engine on `policy`.

    vLLM: an in-process engine on the policy (a LoRA adapter served on its base); transformers: the
    policy loaded on the stage's device, sampled by fst.generation.sample.
    """
    if runtime.backend != "vllm":
        from fst.device import release_gpu_memory
        from fst.generation import sample

        model, tokenizer = _load_model(policy, runtime, prov)
        return Generation(model, tokenizer, partial(sample, model), release_gpu_memory)
    from fst.generation_vllm import VllmEngineSettings, open_vllm_sampler

    with prov.timed("model_load"):
        sampler = open_vllm_sampler(Path(policy), runtime.dtype, VllmEngineSettings(**cfg["vllm"]),
                                    cfg["max_lora_rank"])
    prov.record["runtime"].setdefault("engines", {})[str(policy)] = sampler.describe()

    def engine(_tokenizer, prompts, settings, seed):
        return sampler.sample(prompts, settings, seed)

    return Generation(None, sampler.tokenizer, engine, sampler.close)


@contextmanager
def _opened(policy: str, runtime, cfg: dict, prov: Provenance):
    """`_generation` for one part of a stage: its engine is closed when the part is done."""
    generation = _generation(policy, runtime, cfg, prov)
    try:
        yield generation
    finally:
        generation.close()


def _load_model(policy: str, runtime, prov: Provenance):
    with prov.timed("imports"):
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from fst.policy import load_policy
    with prov.timed("model_load"):
        return load_policy(Path(policy), runtime.dtype, runtime.device)


def cmd_rollout(args) -> None:
    """Rollout stage: G completions per problem of this round under θ_c and Φ_{c+1}."""
    from fst.data import load_split, round_problems
    from fst.population import load_population

    cfg = _json(args.settings)
    inputs = {"policy": args.policy, "population": args.population, "data": args.data}
    prov = Provenance("rollout", inputs, cfg, seed=args.seed)
    runtime = _runtime(cfg, prov)
    generation = _generation(args.policy, runtime, cfg, prov)
    problems = round_problems(load_split(args.data, "train"), args.seed, args.round, cfg["problems"])
    settings = _sampling_settings(cfg)
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


def _slow_processes(gpus: int) -> int:
    """This process's rank; checks that the stage runs in slow.gpus processes, before CUDA starts.

    slow.gpus = 1: one process. Given several GPUs, a single-process Trainer would wrap the model in
    DataParallel, which our per-step loss normaliser does not account for: keep the first GPU.
    slow.gpus = N > 1: `accelerate launch --num_processes N` (the workflow's command) started N
    processes, one per GPU (WORLD_SIZE, RANK and LOCAL_RANK are set by its launcher).
    """
    from fst.slow import process_count, process_mismatch  # no torch yet: CUDA must not start here

    mismatch = process_mismatch(gpus, process_count())
    if mismatch:
        raise SystemExit(f"fst slow: {mismatch}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus == 1 and visible is None:  # unset: torch would see every GPU of the machine
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    elif gpus == 1 and "," in visible:
        log.warning("slow stage: %s GPUs visible, training on the first only", visible.count(",") + 1)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0]
    return int(os.environ.get("RANK", "0"))


def cmd_slow(args) -> None:
    """Slow stage: T CISPO steps (TRL) on the round's stored, scored rollouts."""
    cfg = _json(args.settings)
    rank = _slow_processes(cfg["gpus"])
    inputs = {"scored": args.scored, "policy_in": args.policy_in, "base_model": args.base_model}
    # only the first process writes the provenance: the others skip hashing the inputs
    prov = Provenance("slow", inputs if rank == 0 else {}, cfg, seed=cfg.get("seed"))
    with prov.timed("imports"):
        import peft  # noqa: F401
        import torch
        import trl  # noqa: F401

        from fst.device import describe
        from fst.slow import SlowConfig, round_counts, run_slow_update, slow_runtime
    settings = SlowConfig.from_dict(cfg)
    runtime = slow_runtime(settings)
    visible = torch.cuda.device_count() if runtime.device == "cuda" else 0
    if settings.gpus > 1 and visible < settings.gpus:
        raise SystemExit(
            f"fst slow: slow.gpus is {settings.gpus} but this process computes on {runtime.device} and sees "
            f"{visible} GPU(s): the slow stage runs one process per GPU, on GPUs only. Set slow.gpus to at "
            f"most the GPUs a job gets (1 on a CPU), or run where the job sees {settings.gpus} GPUs."
        )
    if rank == 0:  # describe() touches the current GPU: in another process it would open a context on GPU 0
        prov.record["runtime"] = describe(runtime) | {"processes": settings.gpus}
    with prov.timed("train"):
        metrics = run_slow_update(
            Path(args.scored),
            Path(args.policy_in),
            Path(args.base_model),
            Path(args.out),
            Path(args.state_dir),
            args.round,
            settings,
        )
    if rank != 0:  # the first process writes the round's files; the others only trained
        return
    artifacts.write_json(metrics, args.metrics)
    prov.count(**round_counts(metrics, settings))
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"policy": args.out, "metrics": args.metrics})


def _bootstrap(cfg: dict):
    from fst.evaluate import Bootstrap

    return Bootstrap(cfg["bootstrap_resamples"], cfg["bootstrap_seed"])


def cmd_evaluate(args) -> None:
    """Evaluation stage: validation mean@k (of every task of a continual schedule), KL to the base
    model, out-of-domain accuracy."""
    import pandas as pd

    from fst.data import load_split
    from fst.evaluate import evaluate, evaluation_seed
    from fst.policy import load_policy
    from fst.population import best_member, load_population
    from fst.tasks.splits import frame_to_problems

    cfg = _json(args.settings)
    inputs = {"policy": args.policy, "population": args.population,
              "seed_population": args.seed_population, "data": args.data}
    inputs |= {f"task_data_{i}": path for i, path in enumerate(args.tasks)}
    prov = Provenance("evaluate", inputs, cfg, seed=args.seed)
    runtime = _runtime(cfg, prov)
    ood = {}
    for path in args.ood:
        frame = pd.read_parquet(path)
        problems = frame_to_problems(frame[frame["split"] == "val"])[: cfg["ood_problems"]]
        if problems:
            ood[problems[0].task] = problems
    others = {problems[0].task: problems for problems in map(partial(load_split, split="val"), args.tasks)}
    with _opened(args.policy, runtime, cfg, prov) as generation:

        def kl_models():
            """(policy, base) for the KL, once sampling is done (a vLLM engine closes first)."""
            model = generation.model
            if model is None:
                generation.close()
                model, _ = _load_model(args.policy, runtime, prov)
            with prov.timed("base_model_load"):
                return model, load_policy(Path(args.base_model), runtime.dtype, runtime.device)[0]

        policy_is_base = Path(args.policy).resolve() == Path(args.base_model).resolve()
        with prov.timed("generate_and_score"):
            table, samples = evaluate(
                generation.engine,
                generation.tokenizer,
                None if policy_is_base else kl_models,
                load_split(args.data, "val"),
                best_member(load_population(args.population)),
                best_member(load_population(args.seed_population)),
                ood,
                cfg["k"],
                _sampling_settings(cfg),
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

    cfg = _json(args.settings)
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
    runtime = _runtime(cfg, prov)
    rows, frames, done = [], [], {}
    for selection, after in chosen.items():
        if after not in done:
            _, policy, population = states[after]
            with _opened(policy, runtime, cfg, prov) as generation, \
                    prov.timed(f"generate_and_score_after{after}"):
                done[after] = evaluate_test(
                    generation.engine, generation.tokenizer, test, best_member(load_population(population)),
                    cfg["k"], _sampling_settings(cfg), evaluation_seed(args.seed), _bootstrap(cfg),
                )
            frames.append(done[after][1].assign(after_rounds=after))
        table = done[after][0].assign(selection=selection, after_rounds=after, split="test",
                                      val_value=states[after][0])
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

    cfg = _json(args.settings)
    inputs = {"policy": args.policy, "base_model": args.base_model, "population": args.population,
              "seed_population": args.seed_population, "data": args.data}
    prov = Provenance("decompose", inputs, cfg, seed=args.seed)
    runtime = _runtime(cfg, prov)

    def engine_on(policy):
        @contextmanager
        def opened():
            with _opened(policy, runtime, cfg, prov) as generation:
                yield generation.engine

        return opened

    prompts = {"seed": best_member(load_population(args.seed_population)),
               "evolved": best_member(load_population(args.population))}
    settings = _sampling_settings(cfg)
    with prov.timed("generate_and_score"):
        table, samples = channel_decomposition(
            {"base": engine_on(args.base_model), "trained": engine_on(args.policy)},
            load_tokenizer(Path(args.policy)), load_split(args.data, "val"), prompts, cfg["k"], settings,
            seed=evaluation_seed(args.seed), bootstrap=_bootstrap(cfg),
        )
    table.insert(0, "after_rounds", args.after_rounds)
    artifacts.write_parquet(table, args.out)
    artifacts.write_parquet(samples, args.samples)
    prov.count(eval_rollouts=len(samples))
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"decomposition": args.out, "samples": args.samples})


def _quick_tracking_failure() -> None:
    """MLflow's defaults retry a dead tracking server for minutes; a stage gives up quickly instead
    (the files stay complete and the sync stage fills in what was missed). No network: no telemetry."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


def _eval_metrics(table, prefix: str) -> dict[str, float]:
    """MLflow metrics of an evaluation table: each value, and its 95% interval where it has one."""
    import math

    metrics = {}
    for row in table.itertuples():
        name = f"{prefix}{row.task}/{row.setting}/{row.metric}"
        metrics[name] = float(row.value)
        for bound in ("ci95_low", "ci95_high"):
            value = getattr(row, bound, float("nan"))
            if not math.isnan(value):
                metrics[f"{name}/{bound}"] = float(value)
    return metrics


def cmd_track(args) -> None:
    """Mirror one evaluation point (and the slow metrics that led to it) into MLflow; never fails.

    tracked.json keeps what was sent (the outbox) beside the outcome, so the sync stage can replay
    any point that an outage kept out of MLflow.
    """
    import pandas as pd

    from fst.report.summary import counts_by_run, spent_before
    from fst.tracking import flatten, mirror_round, resolve_tracking_uri

    _quick_tracking_failure()
    table = pd.read_parquet(args.eval)
    metrics = _eval_metrics(table, "")
    if args.test:  # the held-out test split, mirrored with the final evaluation point
        test = pd.read_parquet(args.test)
        for selection, rows in test.groupby("selection"):
            metrics |= _eval_metrics(rows, f"test/{selection}/")
            metrics[f"test/{selection}/after_rounds"] = float(rows["after_rounds"].iloc[0])
    if args.slow_metrics:
        slow = artifacts.read_json(args.slow_metrics)
        metrics.update({f"train/{k}": float(v) for k, v in slow.items() if isinstance(v, int | float)})
    spent = [spent_before(runs, args.after_rounds) for runs in counts_by_run(args.round_provenance).values()]
    point = _json(args.params)
    payload = {
        "experiment": args.experiment,
        "run_key": {"point": args.point, "arm": args.arm, "seed": str(args.seed)},
        "parent_key": {"point": args.point},
        "params": flatten(point["config"]),
        "parent_params": flatten({"swept": point["swept"]}) | flatten(point["config"]),
        "metrics": metrics,
        "step": args.after_rounds,
        "extra_steps": {"rl_steps": sum(s.rl_steps for s in spent),
                        "rollouts": sum(s.policy_rollouts for s in spent)},
        "artifacts": [str(args.eval), *([str(args.population)] if args.population else []),
                      *([str(args.test)] if args.test else [])],
    }
    uri = resolve_tracking_uri(args.uri, Path(args.results_dir))
    status = mirror_round(uri, **payload)
    if not status.get("ok"):
        log.warning("MLflow mirror failed (the files are complete; the sync stage fills it in): %s", status)
    artifacts.write_json({**status, "uri": uri, "payload": payload}, args.out)


def cmd_sync_tracking(args) -> None:
    """Backfill every evaluation point an outage kept out of MLflow; attach the report to each point."""
    from fst.tracking import attach_files, mirror_round, resolve_tracking_uri

    _quick_tracking_failure()
    uri = resolve_tracking_uri(args.uri, Path(args.results_dir))
    backfilled, pending, failed, points = [], [], [], {}
    for path in args.tracked:
        record = artifacts.read_json(path)
        points[record["payload"]["parent_key"]["point"]] = record["payload"]["parent_key"]
        if record.get("ok") and record.get("uri") == uri:
            continue
        if failed:  # one failure is enough to know the server is down: don't wait on every point
            pending.append(str(path))
            continue
        status = mirror_round(uri, **record["payload"])
        (backfilled if status.get("ok") else failed).append({"tracked": str(path), **status})
    attached = []
    for key in points.values() if not failed else []:
        attached.append(attach_files(uri, args.experiment, key, [Path(f) for f in args.files], "report"))
        if not attached[-1].get("ok"):
            failed.append(attached[-1])
            break
    if failed:
        log.warning("MLflow unreachable (%s); %d points still to send. Rerun this stage once it is back: "
                    "snakemake --forcerun sync_tracking", failed[0].get("error"), len(pending) + 1)
    artifacts.write_json({"uri": uri, "ok": not failed, "backfilled": backfilled, "failed": failed,
                          "pending": pending, "report_attached": attached}, args.out)


def cmd_summarize(args) -> None:
    """Summary stage: all runs' evaluations in one table, with RL steps and policy rollouts spent."""
    from fst.report.summary import collect, problem_scores

    artifacts.write_parquet(collect(args.evals, args.round_provenance, args.tests), args.out)
    artifacts.write_parquet(problem_scores(args.samples), args.scores)


def cmd_report(args) -> None:
    """Report stage: the kinds' questions (sample efficiency, ceiling, drift, OOD, decomposition,
    feedback, plasticity, continual learning): tables, figures, Markdown."""
    from fst.evaluate import Bootstrap
    from fst.report import build as report

    kinds = _json(args.kinds)
    figure_files = dict(zip(report.figure_titles(kinds), map(Path, args.figures), strict=True))
    posthoc = report.read_posthoc(args.posthoc_evals, args.posthoc_provenance)
    kind_paths = {kind: (Path(getattr(args, f"{kind}_summary")), Path(getattr(args, f"{kind}_scores")))
                  for kind in ("plasticity", "continual") if kind in kinds}
    report.build(args.experiment, args.summary and Path(args.summary), args.decomposition, posthoc,
                 Path(args.tables), figure_files, Path(args.markdown), args.min_fit_points,
                 args.scores and Path(args.scores), args.decomposition_samples,
                 Bootstrap(args.bootstrap_resamples, args.bootstrap_seed), kinds, kind_paths)


def cmd_config(args) -> None:
    """Print the resolved configuration (schema defaults under your files), each key with its meaning."""
    from fst.config import show_config

    print(show_config([Path(f) for f in args.configfile]), end="")


# Arguments per stage: "name" a required string, "name:int" a required integer, "name?" optional,
# "name*" zero or more values, "name+" one or more.
_STAGES = {
    "config": (cmd_config, "configfile*"),
    "prepare-model": (cmd_prepare_model, "source dtype out provenance"),
    "tasks": (cmd_tasks, "task seed:int sizes data_file? out provenance"),
    "seed-population": (cmd_seed_population, "prompt out provenance"),
    "fast": (
        cmd_fast,
        "arm round:int seed:int population_in policy base_model data settings gepa_dir "
        "previous_gepa_dir? out gepa_rollouts report provenance",
    ),
    "rollout": (cmd_rollout, "policy population data round:int seed:int settings out provenance"),
    "score": (cmd_score, "rollouts data out provenance"),
    "slow": (
        cmd_slow,
        "scored policy_in base_model state_dir round:int settings out metrics provenance",
    ),
    "evaluate": (
        cmd_evaluate,
        "policy population seed_population base_model data tasks* ood* after_rounds:int seed:int settings "
        "out samples provenance",
    ),
    "evaluate-test": (
        cmd_evaluate_test,
        "evals+ policies+ populations+ data seed:int settings out samples provenance",
    ),
    "decompose": (
        cmd_decompose,
        "policy base_model population seed_population data after_rounds:int seed:int settings "
        "out samples provenance",
    ),
    "track": (
        cmd_track,
        "eval population? slow_metrics? test? round_provenance* results_dir experiment point arm seed:int "
        "after_rounds:int params uri? out",
    ),
    "sync-tracking": (cmd_sync_tracking, "tracked+ files* results_dir experiment uri? out"),
    "summarize": (cmd_summarize, "evals+ tests* samples* round_provenance* out scores"),
    "report": (
        cmd_report,
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
