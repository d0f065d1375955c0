"""The least time a finished run's model work could take on this CPU: its arithmetic at the best rate
this machine reaches on the run's own model, against the time each stage kind actually took.

    python benchmarks/compute_floor.py results/<experiment> [--cores 2] [--out FILE]

Counts every token each model stage pushed through the model, from the run's own artifacts:

* evaluation draws: every entry of `shared_samples/` holding samples (each draw is computed once and
  shared; its prompt length is the mean of the evaluations' `samples.parquet` prompts, since entries
  keep only the completions); evaluation KL: every KL entry, both models over prompt + completion;
* rollouts (`rollouts.parquet`), and the slow stage over those rows: the old and reference
  log-prob passes over every row, a forward and a backward pass over the live groups' rows (the
  fraction of `slow_metrics.json`);
* the fast stage: GEPA's metric calls (`gepa_rollouts.parquet`) and the reflection LM's tokens
  (`fast_report.json`).

A token costs 2 × the non-embedding parameters in a forward pass, plus 2 × the LM head's where
logits are needed (generated and scored tokens, not prompts); a backward pass counts as one more
forward (LoRA: activation gradients only). Attention is left out (≤ 10 % at these lengths). The rate
is one thread's forward pass over a batch of 16 × 102 tokens of the run's base model with all
logits, the most favourable shape these stages have. The floor is thus a lower bound: no padding, no
decoding at small batches (memory-bound), no overhead. The comparison uses stage_timing's wall
times; with profiles/default/'s one thread per model job they are thread-seconds.
Writes benchmarks/results/compute_floor.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
from bench_default import stages_of
from stage_timing import ROOT

RESULTS = ROOT / "benchmarks" / "results" / "compute_floor.json"
# each kind of work counted, and the stage kinds (stage_timing's names) that do it
GROUPS = {"evaluation": ("evaluate", "evaluate_test", "decompose"), "rollout": ("rollout",),
          "slow": ("slow",), "fast": ("fast",)}
WORK = {"evaluation draws": "evaluation", "evaluation KL": "evaluation", "rollout": "rollout",
        "slow": "slow", "fast: metric calls": "fast", "fast: reflection": "fast"}


def lengths(frame: pd.DataFrame, column: str) -> int:
    return int(frame[column].map(len).sum())


def token_counts(experiment: Path) -> dict[str, dict[str, float]]:
    """Per kind of work: prompt tokens (no logits), scored tokens (logits) and passes over them."""
    samples = [pd.read_parquet(p, columns=["prompt_ids"]) for p in experiment.rglob("samples.parquet")]
    prompt = pd.concat(samples)["prompt_ids"].map(len).mean() if samples else 0.0
    work: dict[str, dict[str, float]] = {k: {"prompt": 0.0, "scored": 0.0} for k in WORK}

    def add(kind: str, prompt_tokens: float, scored_tokens: float, passes: float = 1.0) -> None:
        work[kind]["prompt"] += passes * prompt_tokens
        work[kind]["scored"] += passes * scored_tokens

    for entry in (experiment / "shared_samples").glob("*.parquet"):
        frame = pd.read_parquet(entry)
        if "ids" in frame:
            add("evaluation draws", len(frame) * prompt, lengths(frame, "ids"))
        else:  # a KL entry: per completion its KL sum and token count, policy and base both run
            add("evaluation KL", (frame["counts"] > 0).sum() * prompt, frame["counts"].sum(), passes=2)
    for path in experiment.rglob("rollouts.parquet"):
        frame = pd.read_parquet(path, columns=["prompt_ids", "completion_ids"])
        p, c = lengths(frame, "prompt_ids"), lengths(frame, "completion_ids")
        add("rollout", p, c)
        metrics = json.loads((path.parent / "slow_metrics.json").read_text())
        live, dead = metrics["groups/live_groups"], metrics["groups/dropped_groups"]
        live = live / max(live + dead, 1)
        add("slow", p, c, passes=2 + 2 * live)  # old + reference log-probs; forward + backward on live rows
    for path in experiment.rglob("gepa_rollouts.parquet"):
        frame = pd.read_parquet(path)
        if "prompt_ids" in frame and len(frame):
            add("fast: metric calls", lengths(frame, "prompt_ids"), lengths(frame, "completion_ids"))
            usage = json.loads((path.parent / "fast_report.json").read_text())["reflection_usage"]
            add("fast: reflection", usage["prompt_tokens"], usage["completion_tokens"])
    return work


def model_rate(model_dir: Path) -> tuple[float, float, float]:
    """(FLOP per prompt token, FLOP per scored token, FLOP/s of one thread on a 16 x 102 forward)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    per_prompt, per_scored = 2.0 * body, 2.0 * (body + head)
    ids = torch.randint(0, model.config.vocab_size, (16, 102))
    with torch.inference_mode():
        model(input_ids=ids)  # warm-up
        best = min(_timed(model, ids) for _ in range(3))
    return per_prompt, per_scored, ids.numel() * per_scored / best


def _timed(model, ids) -> float:
    started = time.perf_counter()
    model(input_ids=ids)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    opts = parser.parse_args()
    if not (opts.experiment / "base_model").is_dir():
        sys.exit(f"{opts.experiment}: no base_model/ folder; give a finished run's results/<experiment>")
    work = token_counts(opts.experiment)
    per_prompt, per_scored, rate = model_rate(opts.experiment / "base_model")
    stages = stages_of(opts.experiment)
    print(f"one thread: {rate / 1e9:.1f} GFLOP/s (forward, 16 x 102 tokens, all logits)")
    floors = {kind: (t["prompt"] * per_prompt + t["scored"] * per_scored) / rate for kind, t in work.items()}
    print(f"{'work':<20} {'TFLOP':>7} {'floor s':>8}")
    for kind, floor in floors.items():
        print(f"{kind:<20} {floor * rate / 1e12:>7.2f} {floor:>8.0f}")
    print(f"\n{'stages':<20} {'floor s':>8} {'measured s':>11} {'floor/measured':>15}")
    groups = {}
    for group, names in GROUPS.items():
        floor = sum(f for kind, f in floors.items() if WORK[kind] == group)
        measured = sum(stages.get(name, {}).get("total_wall_s", 0.0) for name in names)
        groups[group] = {"floor_thread_s": floor, "measured_s": measured}
        print(f"{group:<20} {floor:>8.0f} {measured:>11.0f} {floor / max(measured, 1e-9):>15.2f}")
    floor_total = sum(floors.values())
    wall = floor_total / opts.cores
    print(f"floor: {floor_total:.0f} thread-s, {wall:.0f} s on {opts.cores} cores ({wall / 60:.1f} min) "
          "with every core busy at that rate and nothing else")
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"rate_flop_s": rate, "cores": opts.cores, "floor_thread_s_by_work": floors, "stages": groups,
               "floor_thread_s": floor_total, "floor_wall_s": wall}
    opts.out.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
