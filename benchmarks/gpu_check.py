"""GPU check: rollout, slow and evaluate on randomly initialised Qwen3 models, timed on one device.

    python benchmarks/gpu_check.py [--shapes qwen3-0.6b,qwen3-8b] [--device cuda|cpu] [--out FILE]
                                   [--budget-s S] [--no-vllm]

No weights and no network: each model is built from a transformers `Qwen3Config` with the published
hyperparameters of that checkpoint (written below) and random weights, directly on the device (bf16
on a GPU, float32 on the CPU). Prompts are random token ids; a word-level tokenizer of the model's
vocabulary size stands in where our code needs one (pad/eos ids, decoding). Random weights almost
never emit eos, so every completion runs to its length, which is what a throughput check wants.

Per shape, in order:

1. rollout: generation through `fst.generation.sample` (the rollout stage's sampler: transformers
   `generate` with output_scores and per-token log-probs), after one short untimed warm-up; then,
   where `import vllm` works and the device is a GPU, the same prompts through the stages' own vLLM
   sampler (`fst.generation_vllm.open_vllm_sampler`: eager mode, so no compile or graph-capture
   start-up, explicit sampling settings, per-request seeds) from the model saved to a folder;
2. slow: CISPO steps with the slow stage's own trainer (`fst.slow`'s StoredRolloutTrainer, its
   GRPOConfig from `grpo_args`, the stored rollouts served by `StoredRollouts`) on the rollouts of
   stage 1 with random rewards, gradient checkpointing on; full fine-tuning for qwen3-0.6b and tiny,
   LoRA (the config's default r=16 on q/k/v/o) for qwen3-8b. The step time is the mean over the
   steps after the first (the first also scores the round under the starting and reference weights);
3. evaluate: `fst.evaluate.token_kl` (KL to the base, the evaluation stage's scoring forward passes)
   over the same rollouts; the policy serves as its own base (same compute; the KL itself is then 0).

Figures: tokens/s, peak GPU memory of the stage (torch.cuda.max_memory_allocated, reset before
each stage; vLLM runs in its own process: n/a) and model FLOP utilisation

    MFU = model FLOPs / seconds / peak dense bf16 FLOP/s of the device

with N = the weights of all linear layers (lm_head included; the embedding lookup, norms and the
attention score/value products are left out: < 4 % at these lengths) and per processed token
2N (generation and prefill, forward only), 6N (full fine-tuning: forward + backward for activations
and weights), 4N + 6·N_lora (LoRA: forward + activation gradients through the frozen weights, and the
adapters' own 6 per weight), 4N (evaluation: policy and base forward). Recomputation by gradient
checkpointing is not counted (model FLOPs, not hardware FLOPs). Peak FLOP/s by device name: H100 SXM
and H200 989e12, H100 PCIe 756e12, A100 312e12; any other device (and the CPU) reports n/a.

Prints a table and writes JSON (--out, default benchmarks/results/gpu_check.json). Stages past
--budget-s (default 300 s) are skipped and reported as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench_common import ROOT, peak_rss_mb

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"

# Published config.json values of the two checkpoints (Qwen/Qwen3-0.6B, Qwen/Qwen3-8B); `tiny` is ours,
# small enough that the whole check runs on a CPU in seconds.
_QWEN3_COMMON = {"vocab_size": 151936, "rope_theta": 1_000_000.0, "max_position_embeddings": 40960,
                 "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False}  # fmt: skip
SHAPES = {
    "qwen3-0.6b": _QWEN3_COMMON | {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                                   "tie_word_embeddings": True},  # fmt: skip
    "qwen3-8b": _QWEN3_COMMON | {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                                 "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                                 "tie_word_embeddings": False},  # fmt: skip
    "tiny": _QWEN3_COMMON | {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "head_dim": 16, "tie_word_embeddings": True, "max_position_embeddings": 512},
}  # fmt: skip
# LoRA where full fine-tuning of the shape would not be the realistic choice on one GPU.
LORA_SHAPES = {"qwen3-8b"}
PEAK_BF16_FLOPS = (("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12))
TEMPERATURE = 0.7
SEED = 0


@dataclass(frozen=True)
class Sizes:
    prompts: int  # sequences generated, trained on (steps × batch) and scored
    prompt_len: int
    new_tokens: int
    group_size: int
    steps: int  # CISPO steps; batch = prompts / steps


GPU_SIZES = Sizes(prompts=64, prompt_len=64, new_tokens=128, group_size=8, steps=2)
CPU_SIZES = Sizes(prompts=8, prompt_len=8, new_tokens=8, group_size=2, steps=2)


class Missing(RuntimeError):
    """A package a stage needs is not installed: the stage is reported as skipped."""


def need(module: str, stage: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise Missing(f"{module} not installed ({stage} needs it): {err}") from err


def peak_flops(device: str) -> tuple[str, float | None]:
    import torch

    if device != "cuda":
        return platform.processor() or "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def build_model(shape: str, device: str):
    import torch
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(**SHAPES[shape])
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(SEED)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def word_tokenizer(vocab_size: int):
    """A tokenizer of `vocab_size` words t0, t1, ...: pad t0, eos t1; enough for sampling and TRL."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", eos_token="t1", unk_token="t0")


def linear_params(model) -> int:
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


class Meter:
    """Peak device memory and synchronised wall time of one stage."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            self.peak_gib = None
        self.seconds = time.perf_counter() - self.t0


def row(shape, stage, tokens, seconds, flops, peak_gib, peak, **extra) -> dict:
    return {"shape": shape, "stage": stage, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds else None, "peak_gpu_gib": peak_gib,
            "mfu": flops / seconds / peak if peak and seconds else None, **extra}  # fmt: skip


def skipped(shape, stage, why) -> dict:
    return {"shape": shape, "stage": stage, "skipped": why}


def rollout_transformers(ctx) -> tuple[dict, list]:
    from fst.generation import SamplingSettings, sample

    s = ctx["sizes"]
    settings = SamplingSettings(max_new_tokens=s.new_tokens, temperature=TEMPERATURE, batch_size=s.prompts)
    sample(ctx["model"], ctx["tokenizer"], ctx["prompts"][:2], replace(settings, max_new_tokens=2), SEED)
    with Meter(ctx["device"]) as m:
        completions = sample(ctx["model"], ctx["tokenizer"], ctx["prompts"], settings, SEED)
    new = sum(len(c.ids) for c in completions)
    processed = new + s.prompts * s.prompt_len
    out = row(ctx["shape"], "rollout (transformers)", new, m.seconds, 2 * ctx["n"] * processed, m.peak_gib,
              ctx["peak"], batch=s.prompts, new_tokens_per_prompt=s.new_tokens, prompt_len=s.prompt_len)
    return out, completions


def rollout_vllm(ctx) -> dict:
    if ctx["device"] != "cuda":
        return skipped(ctx["shape"], "rollout (vLLM)", "GPU only")
    if ctx["no_vllm"]:
        return skipped(ctx["shape"], "rollout (vLLM)", "--no-vllm")
    try:
        need("vllm", "rollout (vLLM)")
    except Missing:
        return skipped(ctx["shape"], "rollout (vLLM)", "vLLM not installed")
    from fst.generation import SamplingSettings
    from fst.generation_vllm import VllmEngineSettings, open_vllm_sampler

    s = ctx["sizes"]
    folder = saved_model(ctx)
    engine = VllmEngineSettings(gpu_memory_utilization=0.5, max_model_len=s.prompt_len + s.new_tokens + 16,
                                tensor_parallel_size=1, enforce_eager=True)  # fmt: skip
    t0 = time.perf_counter()
    sampler = open_vllm_sampler(folder, "bfloat16", engine, max_lora_rank=16)  # the stages' own engine
    start_s = time.perf_counter() - t0
    settings = SamplingSettings(max_new_tokens=s.new_tokens, temperature=TEMPERATURE, batch_size=s.prompts)
    sampler.sample(ctx["prompts"][:2], replace(settings, max_new_tokens=2), SEED)  # warm-up
    t0 = time.perf_counter()
    completions = sampler.sample(ctx["prompts"], settings, SEED)
    seconds = time.perf_counter() - t0
    new = sum(len(c.ids) for c in completions)
    processed = new + s.prompts * s.prompt_len
    sampler.close()
    return row(ctx["shape"], "rollout (vLLM)", new, seconds, 2 * ctx["n"] * processed, None, ctx["peak"],
               engine_start_s=start_s, note="eager mode; peak memory in vLLM's own process; "
               "fst.generation_vllm's sampler (stops at the end token)")


def saved_model(ctx) -> Path:
    """The model and tokenizer in a folder (vLLM loads from one; TRL builds a full fine-tune's reference
    model from one). Saved once per shape."""
    folder = ctx["work"] / ctx["shape"]
    if not (folder / "config.json").is_file():
        ctx["model"].save_pretrained(folder)
        ctx["tokenizer"].save_pretrained(folder)
        ctx["model"].config._name_or_path = str(folder)
    return folder


class SyncedStepTimer:
    """Wall time of every optimiser step, the device synchronised at both ends (kernels run async)."""

    def __new__(cls, device: str):
        import torch
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            steps: list[float] = []

            def _sync(self):
                if device == "cuda":
                    torch.cuda.synchronize()

            def on_step_begin(self, args, state, control, **kwargs):
                self._sync()
                self.t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                self._sync()
                self.steps.append(time.perf_counter() - self.t0)

        return Callback()


def stored_rows(ctx, completions):
    """The rollouts as the scoring stage writes them, with random 0/1 rewards (no dead groups)."""
    import pandas as pd

    s, rng = ctx["sizes"], random.Random(SEED)
    rows = []
    for i, (prompt, done) in enumerate(zip(ctx["prompts"], completions, strict=True)):
        g, k = divmod(i, s.group_size)
        rows.append({"round": 0, "group_index": g, "sample_index": k, "prompt_ids": prompt,
                     "completion_ids": done.ids, "logprobs": done.logprobs,
                     "reward": float(k % 2 if k < 2 else rng.random() < 0.5)})  # fmt: skip
    return pd.DataFrame(rows)


def slow_stage(ctx, completions) -> dict:
    need("trl", "slow (CISPO)")
    lora = ctx["shape"] in LORA_SHAPES
    if lora:
        need("peft", "slow (CISPO, LoRA)")
    from fst import settings
    from fst.config import default_config
    from fst.slow import build_trainer, grpo_args, load_round

    s = ctx["sizes"]
    cfg = settings.slow(default_config(), seed=SEED)
    cfg = replace(cfg, steps_per_round=s.steps, batch_size=s.prompts // s.steps, group_size=s.group_size,
                  max_completion_length=s.new_tokens, temperature=TEMPERATURE, warmup_steps=0,
                  gradient_checkpointing=True, importance_correction="off",  # the trainer's own model sampled
                  lora=replace(cfg.lora, enabled=lora))  # fmt: skip
    scored = ctx["work"] / f"{ctx['shape']}-scored.parquet"
    stored_rows(ctx, completions).to_parquet(scored, index=False)
    rows = load_round(scored, 0, cfg)
    if cfg.beta and not lora:
        saved_model(ctx)  # TRL loads the reference model from the folder the policy names
    args = grpo_args(cfg, ctx["work"] / f"{ctx['shape']}-state", 0)
    args.save_strategy = "no"  # a check, not a run: no checkpoint to write
    timer = SyncedStepTimer(ctx["device"])
    with Meter(ctx["device"]) as m:
        trainer = build_trainer(ctx["model"], cfg.lora.to_peft() if lora else None, rows, args, cfg,
                                ctx["tokenizer"], callbacks=[timer])  # fmt: skip
        trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.model)
    n_lora = sum(p.numel() for p in trained.parameters() if p.requires_grad) if lora else 0
    del trainer
    gc.collect()
    if ctx["device"] == "cuda":
        __import__("torch").cuda.empty_cache()
    ctx["model"] = trained.eval()
    later = timer.steps[1:] or timer.steps
    step_s = sum(later) / len(later)
    tokens = int(rows["prompt_ids"].map(len).sum() + rows["completion_ids"].map(len).sum())
    per_step = tokens // s.steps
    flops = (4 * ctx["n"] + 6 * n_lora if lora else 6 * ctx["n"]) * per_step
    mode = f"LoRA r={cfg.lora.r}" if lora else "full"
    return row(ctx["shape"], f"slow (CISPO, {mode})", per_step, step_s, flops, m.peak_gib, ctx["peak"],
               step_s=step_s, step_times_s=timer.steps, sequences_per_step=cfg.batch_size,
               trainable_params=n_lora or ctx["n"], stage_wall_s=m.seconds, gradient_checkpointing=True)


def evaluate_stage(ctx, completions) -> dict:
    from fst.evaluate import token_kl

    s = ctx["sizes"]
    samples = {"prompt_ids": ctx["prompts"], "completion_ids": [c.ids for c in completions]}
    with Meter(ctx["device"]) as m:
        kl = token_kl(ctx["model"], ctx["model"], samples, TEMPERATURE, batch_size=min(16, s.prompts))
    tokens = sum(map(len, samples["prompt_ids"])) + sum(map(len, samples["completion_ids"]))
    return row(ctx["shape"], "evaluate (KL to base)", tokens, m.seconds, 4 * ctx["n"] * tokens, m.peak_gib,
               ctx["peak"], kl=kl, note="policy as its own base: two forward passes per batch")


def check_shape(shape: str, opts, work: Path, peak: float | None, deadline: float) -> list[dict]:
    import torch

    sizes = GPU_SIZES if opts.device == "cuda" else CPU_SIZES
    t0 = time.perf_counter()
    model = build_model(shape, opts.device)
    vocab = SHAPES[shape]["vocab_size"]
    rng = random.Random(SEED)
    prompts = [[rng.randrange(2, vocab) for _ in range(sizes.prompt_len)] for _ in range(sizes.prompts)]
    ctx = {"shape": shape, "device": opts.device, "sizes": sizes, "model": model, "work": work,
           "tokenizer": word_tokenizer(vocab), "n": linear_params(model), "peak": peak,
           "no_vllm": opts.no_vllm, "prompts": prompts}  # fmt: skip
    progress(f"{shape}: built, {sum(p.numel() for p in model.parameters()) / 1e6:,.1f} M parameters "
             f"({ctx['n'] / 1e6:,.1f} M in linear layers)", t0)  # fmt: skip
    out = []
    completions = None
    stages = [("rollout (transformers)", lambda: rollout_transformers(ctx)),
              ("rollout (vLLM)", lambda: rollout_vllm(ctx)),
              ("slow (CISPO)", lambda: slow_stage(ctx, completions)),
              ("evaluate (KL to base)", lambda: evaluate_stage(ctx, completions))]  # fmt: skip
    for name, run in stages:
        if time.perf_counter() > deadline:
            out.append(skipped(shape, name, f"time budget of {opts.budget_s:.0f} s spent"))
            continue
        if completions is None and name != "rollout (transformers)":
            out.append(skipped(shape, name, "no rollouts"))
            continue
        t = time.perf_counter()
        try:
            if name == "rollout (transformers)":
                result, completions = run()
            else:
                result = run()
        except Missing as err:
            result = skipped(shape, name, str(err))
        except Exception as err:  # a check reports every stage it can; the error is the stage's result
            logging.exception("%s: %s failed", shape, name)
            result = skipped(shape, name, f"error: {type(err).__name__}: {err}")
        result["elapsed_s"] = time.perf_counter() - t
        out.append(result)
        skip = result.get("skipped")
        done = f"skipped ({skip})" if skip else f"{result['tokens_per_s']:.0f} tok/s"
        progress(f"{shape}: {result['stage']} {done}", t)
    ctx.clear()  # the model and what the stages built on it
    del model
    gc.collect()
    if opts.device == "cuda":
        torch.cuda.empty_cache()
    return out


def progress(message: str, since: float) -> None:
    print(f"[{time.perf_counter() - since:6.1f} s] {message}", flush=True)


def table(rows: list[dict]) -> str:
    from tabulate import tabulate

    def fmt(value, spec):
        return "n/a" if value is None else format(value, spec)

    gap = ["-"] * 5
    body = [[r["shape"], r["stage"], *gap, f"skipped: {r['skipped']}"] if "skipped" in r else
            [r["shape"], r["stage"], r["tokens"], fmt(r["seconds"], ".3f"), fmt(r["tokens_per_s"], ",.0f"),
             fmt(r["peak_gpu_gib"], ".2f"), fmt(r["mfu"] and 100 * r["mfu"], ".1f"), r.get("note", "")]
            for r in rows]  # fmt: skip
    headers = ["shape", "stage", "tokens", "s (slow: per step)", "tokens/s", "peak GPU GiB", "MFU %", "note"]
    return tabulate(body, headers=headers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="qwen3-0.6b,qwen3-8b", help=f"comma-separated: {sorted(SHAPES)}")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON result file")
    parser.add_argument("--budget-s", type=float, default=300.0, help="skip the stages that start later")
    parser.add_argument("--no-vllm", action="store_true", help="skip the vLLM rollout even where installed")
    opts = parser.parse_args(argv)
    shapes = [s.strip() for s in opts.shapes.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        parser.error(f"unknown shapes {unknown}; known: {sorted(SHAPES)}")
    start = time.perf_counter()
    try:
        import torch
        need("transformers", "every stage")
    except ImportError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    if opts.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}); run on a GPU machine, "
              "or pass --device cpu --shapes tiny for a functional check", file=sys.stderr)  # fmt: skip
        return 2
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    device_name, peak = peak_flops(opts.device)
    flops = f"{peak:.3g}" if peak else "n/a"
    progress(f"device {opts.device} ({device_name}), peak dense bf16 {flops} FLOP/s", start)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            rows += check_shape(shape, opts, Path(tmp), peak, start + opts.budget_s)
    elapsed = time.perf_counter() - start
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "vllm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    result = {"device": opts.device, "device_name": device_name, "peak_bf16_flops": peak,
              "sizes": vars(GPU_SIZES if opts.device == "cuda" else CPU_SIZES), "shapes": shapes,
              "rows": rows, "elapsed_s": elapsed, "peak_rss_mb": peak_rss_mb(), "versions": versions,
              "machine": platform.platform()}  # fmt: skip
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(rows))
    print(f"\ntotal {elapsed:.1f} s (budget {opts.budget_s:.0f} s); written to {opts.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
