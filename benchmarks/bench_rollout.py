"""Benchmark the rollout stage's generation against a bare `model.generate` loop on the same batch.

    python benchmarks/bench_rollout.py [--model DIR] [--problems N] [--group-size G]
                                       [--max-new-tokens M] [--repeats R] [--threads T] [--no-memory]

Both arms sample one completion for each of N problems x G system-prompt slots (the chat-templated
prompts the stage builds), in left-padded batches of the same size, seeded per batch the same way:

* stage: `fst.rollout.generate_rollouts` (through `fst.generation.sample`: output_scores, the
  log-probabilities the sampler used, decoding, one DataFrame row per completion);
* baseline: the least a user would write: left-pad, `model.generate(do_sample=True, top_k=0,
  temperature, max_new_tokens)` with no scores, cut at eos, decode.

The arms run alternately in this process (baseline, stage, baseline, stage, ...) after one untimed
warm-up, and each reports the median over repeats; tokens are the generated tokens kept (up to and
including eos), as the stage's provenance counts them. With the same seeds both arms should draw
the same tokens, which the result records. Time inside `model.generate` is measured separately in
both arms to show where any difference comes from. Besides the ratio of medians the result gives
the ratio of the best runs, of tokens per CPU second, and of each stage run to the baseline run just
before it: on a CPU shared with other work, read them together.

Peak memory: each arm also runs once in a child process of its own (model load, then one run), which
reports its ru_maxrss and, where Linux lets a process reset its high-water mark
(/proc/self/clear_refs), the peak RSS during generation alone.

Prints a table and writes benchmarks/results/rollout.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import ROOT, base_model, peak_rss_mb

RESULTS = ROOT / "benchmarks" / "results" / "rollout.json"
# config/config.yaml's seed prompt and rollout temperature.
SYSTEM = "You are a careful math tutor. Work out the answer, then end your reply with the final number."
TEMPERATURE = 0.7
BATCH_SIZE = 32
SEED = 1234
TARGET = 0.9


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Setup:
    """Model, tokenizer, problems, population and sampling settings shared by both arms."""

    def __init__(self, opts):
        from fst.generation import SamplingSettings, chat_prompt_ids
        from fst.policy import load_policy
        from fst.population import seed_population, spread_over_group
        from fst.tasks import get_task

        self.model_dir = base_model(opts.model)
        t0 = time.perf_counter()
        self.model, self.tokenizer = load_policy(self.model_dir, "float32")  # as the stage loads it
        self.load_s = time.perf_counter() - t0
        self.problems = get_task("arithmetic").generate(random.Random(0), opts.problems)
        self.members = seed_population(SYSTEM)
        self.group_size = opts.group_size
        self.settings = SamplingSettings(opts.max_new_tokens, TEMPERATURE, BATCH_SIZE)
        # The baseline's prompts: the same chat-templated ids the stage builds (problem-major, G each).
        self.prompts = [
            chat_prompt_ids(self.tokenizer, member.text, problem.question)
            for problem in self.problems
            for member in spread_over_group(self.members, opts.group_size)
        ]
        self.generate_s = 0.0
        original = self.model.generate

        @functools.wraps(original)
        def timed_generate(*args, **kwargs):
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.generate_s += time.perf_counter() - t

        self.model.generate = timed_generate  # an instance attribute: both arms go through it

    def run_stage(self) -> list[list[int]]:
        from fst.rollout import generate_rollouts

        rows = generate_rollouts(
            self.model,
            self.tokenizer,
            self.problems,
            self.members,
            self.group_size,
            self.settings,
            seed=SEED,
            round_index=0,
            backend="transformers",
        )
        return [list(ids) for ids in rows["completion_ids"]]

    def run_baseline(self, max_new_tokens: int | None = None) -> list[list[int]]:
        """The bare loop: left-pad a batch, sample, cut at eos, decode."""
        import torch

        tok, eos = self.tokenizer, self.tokenizer.eos_token_id
        completions, texts = [], []
        size = self.settings.batch_size
        for start in range(0, len(self.prompts), size):
            torch.manual_seed(SEED + start)  # the stage seeds each batch the same way
            batch = self.prompts[start : start + size]
            width = max(map(len, batch))
            input_ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in batch])
            attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                do_sample=True,
                top_k=0,
                temperature=self.settings.temperature,
                max_new_tokens=max_new_tokens or self.settings.max_new_tokens,
                pad_token_id=tok.pad_token_id,
            )
            for row in out[:, width:].tolist():
                row = row[: row.index(eos) + 1] if eos in row else row
                completions.append(row)
                texts.append(tok.decode(row, skip_special_tokens=True))
        return completions

    def timed(self, arm: str) -> dict:
        self.generate_s = 0.0
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0, cpu0 = time.perf_counter(), time.process_time()
        completions = self.run_stage() if arm == "stage" else self.run_baseline()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        tokens = sum(map(len, completions))
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "page_faults": faults,  # minor: fresh memory touched (allocation churn)
            "tokens_per_cpu_s": tokens / cpu,
            "generate_s": self.generate_s,
            "tokens": tokens,
            "tokens_per_s": tokens / wall,
            "completions": completions,
        }


def diagnose(setup: Setup, repeats: int = 3) -> dict:
    """Time the stage's extra work outside generate on stand-ins of the real sizes."""
    import torch

    from fst.generation import chat_prompt_ids
    from fst.population import spread_over_group

    settings, vocab = setup.settings, setup.model.config.vocab_size
    rows = min(settings.batch_size, len(setup.prompts))
    batches = -(-len(setup.prompts) // settings.batch_size)
    scores = tuple(torch.randn(rows, vocab) for _ in range(settings.max_new_tokens))
    new_tokens = torch.randint(vocab, (rows, settings.max_new_tokens))
    post, template = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        # As fst.generation._generate_batch post-processes out.scores, once per batch: the
        # log-probability of each drawn token, one step at a time.
        steps = [
            step.float().log_softmax(-1).gather(-1, new_tokens[:, t : t + 1]).squeeze(-1)
            for t, step in enumerate(scores)
        ]
        torch.stack(steps, dim=1).tolist()
        post.append((time.perf_counter() - t0) * batches)
        t0 = time.perf_counter()
        for problem in setup.problems:
            for member in spread_over_group(setup.members, setup.group_size):
                chat_prompt_ids(setup.tokenizer, member.text, problem.question)
        template.append(time.perf_counter() - t0)
    return {
        "scores_postprocess_s": statistics.median(post),
        "scores_kept_mb": rows * vocab * settings.max_new_tokens * 4 / 2**20,
        "chat_template_s": statistics.median(template),
    }


def child(arm: str, opts) -> None:
    """One arm once, in a process of its own: print its memory figures as JSON.

    Peaks come from VmHWM, which starts afresh at exec, not from ru_maxrss, which keeps the RSS the
    parent had when it forked this process.
    """
    import torch

    setup = Setup(opts)
    with torch.no_grad():  # fault in the weights (safetensors maps them; loading does not read them)
        setup.model(torch.tensor([setup.prompts[0][:8]]))
    ready = _status_mb("VmRSS")
    load_peak = _status_mb("VmHWM")
    reset = _reset_high_water_mark()
    run = setup.timed(arm)
    peak = _status_mb("VmHWM")
    result = {
        "arm": arm,
        "rss_ready_mb": ready,  # model loaded and its weights resident
        "load_peak_rss_mb": load_peak,
        "peak_rss_mb": max(load_peak, peak) if reset else peak,  # the whole process, as Snakemake sees it
        "ru_maxrss_mb": peak_rss_mb(),
        "generation_peak_rss_mb": peak if reset else None,
        "generation_increase_mb": peak - ready if reset else None,
        "tokens": run["tokens"],
        "wall_s": run["wall_s"],
    }
    print(json.dumps(result))


def measure_memory(opts) -> dict:
    memory = {}
    for arm in ("baseline", "stage"):
        argv = [sys.executable, __file__, "--child", arm, "--problems", str(opts.problems)]
        argv += ["--group-size", str(opts.group_size), "--max-new-tokens", str(opts.max_new_tokens)]
        if opts.model:
            argv += ["--model", opts.model]
        if opts.threads:
            argv += ["--threads", str(opts.threads)]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(f"memory child for {arm} failed (exit {done.returncode})")
        memory[arm] = json.loads(done.stdout.strip().splitlines()[-1])
    return memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: SmolLM2-135M-Instruct, prepared once)")
    parser.add_argument("--problems", type=int, default=8, help="problems (N)")
    parser.add_argument("--group-size", type=int, default=4, help="completions per problem (G)")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="new tokens per completion")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per arm, alternating")
    parser.add_argument("--threads", type=int, help="torch threads in both arms (default: torch's)")
    parser.add_argument("--no-memory", action="store_true", help="skip the child processes for memory")
    parser.add_argument("--child", choices=("baseline", "stage"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.threads:
        import torch

        torch.set_num_threads(opts.threads)
    if opts.child:
        child(opts.child, opts)
        return
    # Memory first, while this process is still small: a child's ru_maxrss starts at the RSS its
    # parent had when it forked.
    memory = {} if opts.no_memory else measure_memory(opts)

    import torch
    import transformers

    setup = Setup(opts)
    setup.run_baseline(max_new_tokens=4)  # warm-up, untimed
    arms = ("baseline", "stage")
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for rep in range(opts.repeats):
        for arm in arms:
            run = setup.timed(arm)
            runs[arm].append(run)
            print(
                f"  repeat {rep + 1}/{opts.repeats} {arm:<8} {run['wall_s']:7.2f} s "
                f"{run['tokens']:5d} tokens {run['tokens_per_s']:7.1f} tok/s "
                f"({run['cpu_s']:.1f} CPU s, {run['generate_s']:.2f} s in generate)",
                file=sys.stderr,
            )
    same = all(b["completions"] == s["completions"] for b, s in zip(*runs.values(), strict=True))
    summary = {}
    for arm in arms:
        walls = [r["wall_s"] for r in runs[arm]]
        gens = [r["generate_s"] for r in runs[arm]]
        rates = [r["tokens_per_s"] for r in runs[arm]]
        cpu_rates = [r["tokens_per_cpu_s"] for r in runs[arm]]
        summary[arm] = {
            "tokens_per_s_median": statistics.median(rates),
            "wall_s_median": statistics.median(walls),
            "generate_s_median": statistics.median(gens),
            "outside_generate_s_median": statistics.median(w - g for w, g in zip(walls, gens, strict=True)),
            "tokens_per_s_best": max(rates),
            "tokens_per_cpu_s_median": statistics.median(cpu_rates),
            "tokens": [r["tokens"] for r in runs[arm]],
            "wall_s": walls,
            "cpu_s": [r["cpu_s"] for r in runs[arm]],
            "page_faults": [r["page_faults"] for r in runs[arm]],
            "generate_s": gens,
            "tokens_per_s": rates,
        }
    ratio = summary["stage"]["tokens_per_s_median"] / summary["baseline"]["tokens_per_s_median"]
    best_ratio = summary["stage"]["tokens_per_s_best"] / summary["baseline"]["tokens_per_s_best"]
    cpu_ratio = summary["stage"]["tokens_per_cpu_s_median"] / summary["baseline"]["tokens_per_cpu_s_median"]
    # Each repeat's stage run against the baseline run just before it: drift in the load cancels more.
    paired = [s["tokens_per_s"] / b["tokens_per_s"] for b, s in zip(*runs.values(), strict=True)]
    diagnostics = diagnose(setup)
    result = {
        "model": str(setup.model_dir),
        "problems": opts.problems,
        "group_size": opts.group_size,
        "completions": opts.problems * opts.group_size,
        "batch_size": setup.settings.batch_size,
        "max_new_tokens": opts.max_new_tokens,
        "temperature": setup.settings.temperature,
        "prompt_tokens": sum(map(len, setup.prompts)),
        "repeats": opts.repeats,
        "model_load_s": setup.load_s,
        "arms": summary,
        "ratio_stage_over_baseline": ratio,
        "ratio_stage_over_baseline_best": best_ratio,
        "ratio_stage_over_baseline_cpu_time": cpu_ratio,
        "paired_ratios": paired,
        "target_ratio": TARGET,
        "meets_target": ratio >= TARGET,
        "same_tokens_in_both_arms": same,
        "stage_extra_outside_generate": diagnostics,
        "memory": memory,
        "peak_rss_mb_this_process": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    header = ("arm", "tok/s", "wall s", "in generate s", "outside s", "peak RSS MB")
    print("{:<9} {:>7} {:>7} {:>14} {:>10} {:>12}".format(*header))
    for arm in arms:
        s = summary[arm]
        peak = memory.get(arm, {}).get("peak_rss_mb")
        print(
            f"{arm:<9} {s['tokens_per_s_median']:>7.1f} {s['wall_s_median']:>7.2f} "
            f"{s['generate_s_median']:>14.2f} {s['outside_generate_s_median']:>10.2f} "
            f"{'-' if peak is None else f'{peak:.0f}':>12}"
        )
    print(f"ratio stage/baseline (median tok/s): {ratio:.3f} (target >= {TARGET})")
    print(
        f"  best run of each: {best_ratio:.3f}; per CPU second: {cpu_ratio:.3f}; "
        f"per repeat: {', '.join(f'{r:.3f}' for r in paired)} "
        f"(median {statistics.median(paired):.3f})"
    )
    print(f"same tokens in both arms: {same}")
    print(
        f"stage work outside generate (stand-ins): log-probs from out.scores "
        f"{diagnostics['scores_postprocess_s']:.2f} s, "
        f"chat templates {diagnostics['chat_template_s']:.2f} s; "
        f"out.scores holds {diagnostics['scores_kept_mb']:.0f} MB per batch"
    )
    for arm in arms if memory else ():
        m = memory[arm]
        if m.get("generation_increase_mb") is not None:
            print(
                f"{arm}: RSS {m['rss_ready_mb']:.0f} MB with the model resident, "
                f"peak {m['generation_peak_rss_mb']:.0f} MB while generating "
                f"(+{m['generation_increase_mb']:.0f} MB)"
            )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
