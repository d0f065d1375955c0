"""Benchmark the slow stage against a bare TRL GRPOTrainer on the same stored batch.

    python benchmarks/bench_slow.py [--model DIR] [--full] [--steps T] [--repeats N]

Both arms train the same model on the same rollouts (8 sequences per step, <= 48 new tokens, groups
of 4 mixing two system prompts) with the same GRPOConfig, in this process, alternating. A step is
timed from Trainer's on_step_begin to on_step_end (forward, backward, optimizer; the first step of a
round also scores the batch under the starting and reference weights); the ratio compares the
fastest repeat of each step. Peak memory is this process's ru_maxrss (all runs and the rollout sampling).
Prints a table and writes benchmarks/results/slow.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from bench_common import ROOT, base_model, peak_rss_mb

from fst import settings
from fst.config import default_config
from fst.slow import (
    SlowConfig,
    StoredRollouts,
    group_dataset,
    grpo_args,
    load_round,
    run_slow_update,
    slow_runtime,
    stored_reward,
    weights_dtype,
)

RESULTS = ROOT / "benchmarks" / "results" / "slow.json"
SYSTEM = ("Answer with the number only.", "Think step by step, then give the number.")
MAX_NEW_TOKENS = 48


def _completion_logprobs(model, prompt_ids: list[int], completion: list[int]) -> list[float]:
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion])).logits[0, len(prompt_ids) - 1 : -1]
    return torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


def make_rollouts(model_dir: Path, cfg: SlowConfig) -> pd.DataFrame:
    """Sample one round of groups (system prompts alternating inside each group) and score them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    eos = tokenizer.eos_token_id
    rows = []
    for g in range(cfg.steps_per_round * cfg.batch_size // cfg.group_size):
        a, b = 3 + 7 * g, 11 + 5 * g
        user = f"What is {a} + {b}?"
        systems = [SYSTEM[s % 2] for s in range(cfg.group_size)]
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "system", "content": s}, {"role": "user", "content": user}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for s in systems
        ]
        batch = tokenizer(prompts, return_tensors="pt", padding=True)
        torch.manual_seed(g)
        out = model.generate(**batch, do_sample=True, top_k=0, temperature=cfg.temperature,
                             max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
        for s, system in enumerate(systems):
            prompt_ids = batch["input_ids"][s][batch["attention_mask"][s].bool()].tolist()
            completion = out[s, batch["input_ids"].shape[1] :].tolist()
            completion = completion[: completion.index(eos) + 1] if eos in completion else completion
            text = tokenizer.decode(completion, skip_special_tokens=True)
            rows.append({
                "round": 0, "problem_id": f"add-{g}", "task": "math", "group_index": g,
                "sample_index": s, "member_id": f"m{s % 2}", "system_text": system, "user_text": user,
                "prompt_ids": prompt_ids, "completion_text": text, "completion_ids": completion,
                "logprobs": _completion_logprobs(model, prompt_ids, completion),
                "finish_reason": "stop" if completion[-1] == eos else "length",
                "backend": "transformers", "seed": g, "temperature": cfg.temperature,
                "reward": float(str(a + b) in text), "components": "{}", "feedback": "",
                "answer": str(a + b),
            })  # fmt: skip
    return pd.DataFrame(rows)


class StepTimer:
    """Times every step of every GRPOTrainer built while installed (stage and bare alike).

    Wall and process CPU seconds: the CPU time is less disturbed by other jobs on a shared machine.
    """

    def __init__(self):
        from transformers import TrainerCallback
        from trl import GRPOTrainer

        self.steps: list[tuple[float, float]] = []
        timer = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                self.t0 = (time.perf_counter(), time.process_time())

            def on_step_end(self, args, state, control, **kwargs):
                wall, cpu = self.t0
                timer.steps.append((time.perf_counter() - wall, time.process_time() - cpu))

        original = GRPOTrainer.__init__

        def init(trainer, *args, **kwargs):
            original(trainer, *args, **kwargs)
            trainer.add_callback(Callback())

        GRPOTrainer.__init__ = init

    def take(self) -> list[tuple[float, float]]:
        steps, self.steps = self.steps, []
        return steps


def run_stage(scored: Path, model_dir: Path, cfg: SlowConfig, work: Path) -> None:
    run_slow_update(scored, model_dir, model_dir, work / "policy", work / "state", 0, cfg)


def run_bare(scored: Path, model_dir: Path, cfg: SlowConfig, work: Path) -> None:
    """Plain GRPOTrainer, same arguments, a minimal rollout_func over the same rows."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import GRPOTrainer

    rows = load_round(scored, 0, cfg)
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, weights_dtype(slow_runtime(cfg), cfg.lora.enabled))),
        reward_funcs=stored_reward,
        args=grpo_args(cfg, work / "state", 0),
        train_dataset=group_dataset(rows),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=cfg.lora.to_peft() if cfg.lora.enabled else None,
        rollout_func=StoredRollouts(rows),
    )
    trainer.remove_callback(PrinterCallback)  # keep the output readable; printing costs nothing
    trainer.train()


def measure(scored: Path, model_dir: Path, cfg: SlowConfig, work: Path, repeats: int) -> dict:
    """Alternate the arms (order flipped every repeat); per run: step (wall, cpu) times and run wall."""
    timer = StepTimer()
    arms = {"stage": run_stage, "bare": run_bare}
    runs = {name: [] for name in arms}
    for rep in range(repeats):
        for name in sorted(arms, reverse=rep % 2 == 1):
            t0 = time.perf_counter()
            arms[name](scored, model_dir, cfg, work / f"{name}-{rep}")
            runs[name].append({"run_wall_s": time.perf_counter() - t0, "steps": timer.take()})
    return runs


def summarise(runs: dict) -> dict:
    """Per arm and step position, the fastest and the median repeat; ratios of the fastest.

    Other jobs on a shared machine only ever add time, so the minimum over repeats is the estimate
    least disturbed by them (the medians are kept to show the spread).
    """
    out = {}
    for name, arm in runs.items():
        by_position = list(zip(*(run["steps"] for run in arm), strict=True))
        for i, kind in enumerate(("wall", "cpu")):
            times = [[step[i] for step in position] for position in by_position]
            out.setdefault(name, {})[f"step_{kind}_s_min"] = [min(t) for t in times]
            out[name][f"step_{kind}_s_median"] = [statistics.median(t) for t in times]
        out[name]["run_wall_s_min"] = min(run["run_wall_s"] for run in arm)
    for kind in ("wall", "cpu"):
        stage, bare = (sum(out[name][f"step_{kind}_s_min"]) for name in ("stage", "bare"))
        out[f"step_{kind}_ratio_stage_over_bare"] = stage / bare
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model folder (default: SmolLM2-135M, prepared once)")
    parser.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps per run (T)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per arm, alternating")
    opts = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    model_dir = base_model(opts.model)
    defaults = default_config()  # the slow stage's settings as the default experiment builds them
    cfg = replace(settings.slow(defaults, seed=0), steps_per_round=opts.steps, batch_size=8, group_size=4,
                  max_completion_length=MAX_NEW_TOKENS, warmup_steps=0)  # fmt: skip
    cfg = replace(cfg, lora=replace(cfg.lora, enabled=not opts.full))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        scored = tmp / "scored.parquet"
        make_rollouts(model_dir, cfg).to_parquet(scored, index=False)
        rollout_s = time.perf_counter() - t0
        rss_after_rollouts = peak_rss_mb()
        runs = measure(scored, model_dir, cfg, tmp, opts.repeats)

    summary = summarise(runs)
    result = {
        "model": str(model_dir),
        "mode": "full" if opts.full else f"lora r={cfg.lora.r}",
        "sequences_per_step": cfg.batch_size,
        "max_new_tokens": MAX_NEW_TOKENS,
        "steps_per_run": cfg.steps_per_round,
        "repeats": opts.repeats,
        **summary,
        "runs": runs,
        "rollout_generation_s": rollout_s,
        "peak_rss_mb_after_rollouts": rss_after_rollouts,
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "machine": platform.platform(),
        "versions": {m.__name__: m.__version__ for m in map(__import__, ("torch", "transformers", "trl"))},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfastest of {opts.repeats} runs, per step ({result['mode']}, {cfg.batch_size} sequences/step)")
    print(f"{'arm':<6} {'step wall s':>18} {'step cpu s':>18} {'run wall s':>11}")
    for name in runs:
        arm = summary[name]
        wall, cpu = (" ".join(f"{t:5.1f}" for t in arm[f"step_{k}_s_min"]) for k in ("wall", "cpu"))
        print(f"{name:<6} {wall:>18} {cpu:>18} {arm['run_wall_s_min']:>11.1f}")
    print(
        f"stage/bare step time: wall {summary['step_wall_ratio_stage_over_bare']:.3f}, "
        f"cpu {summary['step_cpu_ratio_stage_over_bare']:.3f} (target <= 1.1)"
    )
    print(f"peak RSS: {result['peak_rss_mb']:.0f} MB ({rss_after_rollouts:.0f} MB after rollouts)")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
