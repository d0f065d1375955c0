"""Arm rl as the workflow runs it against TRL's own online GRPOTrainer loop, the same training work.

    python benchmarks/bench_rl_arm.py [--model DIR] [--rounds R] [--repeats N] [--no-warm]

**ours**: for each of R rounds (the default's 3), the jobs of arm rl's round as Snakemake starts them:
`fst rollout`, `fst score`, `fst slow`, each a command of its own with the settings JSON the rules
build from the default config (fst.settings), the files between them, the trainer state checkpointed
and resumed between rounds. With the warm stage runner (as a local workflow run has it) unless
`--no-warm`; the runner's one-time start is timed apart (a run pays it once, beside its first jobs).

**peer**: one `python` process that imports TRL, loads the same model folder and trains the same
R x T steps with `GRPOTrainer` generating online: the same problems in the same order (the rounds'
problems, unshuffled), the same seed prompt, G, batch, T steps per generation (the whole round is
generated at once, as our rollout stage does), max tokens, temperature, LoRA and CISPO settings
(fst.slow.grpo_args), our reward function; no checkpoints (TRL's loop keeps nothing between rounds).

Both sides are timed from process start to exit, alternating, with OMP_NUM_THREADS set to the model
rules' threads in profiles/default/ (one). Prints the table and the ratio ours / peer (target <= 1.25);
writes benchmarks/results/rl_arm.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import yaml
from bench_common import ROOT, base_model

from fst.config import default_config

RESULTS = ROOT / "benchmarks" / "results" / "rl_arm.json"
SEED = 0  # the default's run seed
PROFILE = ROOT / "profiles" / "default" / "config.yaml"
THREADS = str(yaml.safe_load(PROFILE.read_text())["set-threads"]["slow"])  # the model rules' threads


def prepare(folder: Path, cfg: dict) -> dict[str, Path]:
    """The default's arithmetic data and seed population, as the workflow's first jobs write them."""
    from fst import artifacts
    from fst.data import build_task_data
    from fst.population import save_population, seed_population

    tasks = cfg["tasks"]
    data, population = folder / "arithmetic.parquet", folder / "population_seed.json"
    artifacts.write_parquet(build_task_data(tasks["train"], tasks["seed"], tasks["sizes"], None), data)
    save_population(seed_population(cfg["prompts"]["seed"]), population, 0)
    return {"data": data, "population": population}


def _jobs(model: Path, files: dict, run: Path, cfg: dict, rounds: int) -> list[list[str]]:
    """The `fst` commands of arm rl's rounds, as the rules write them."""
    from fst import settings

    rollout, slow = json.dumps(settings.rollout_stage(cfg)), json.dumps(asdict(settings.slow(cfg, SEED)))
    jobs = []
    for r in range(rounds):
        here, policy = run / f"round{r}", model if r == 0 else run / f"round{r - 1}" / "policy"
        jobs += [
            ["rollout", "--policy", str(policy), "--population", str(files["population"]), "--data",
             str(files["data"]), "--round", str(r), "--seed", str(SEED), "--settings", rollout,
             "--out", str(here / "rollouts.parquet"), "--provenance", str(here / "rollout.json")],
            ["score", "--rollouts", str(here / "rollouts.parquet"), "--data", str(files["data"]),
             "--out", str(here / "scored.parquet"), "--provenance", str(here / "score.json")],
            ["slow", "--scored", str(here / "scored.parquet"), "--policy-in", str(policy), "--base-model",
             str(model), "--reference", str(model), "--state-dir", str(run / "trainer_state"), "--round",
             str(r), "--settings", slow, "--out", str(here / "policy"), "--metrics",
             str(here / "slow_metrics.json"), "--provenance", str(here / "slow.json")],
        ]
    return jobs


def run_ours(model: Path, files: dict, folder: Path, cfg: dict, rounds: int, socket: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS, FST_WARM_RUNNER=socket or "off")
    times: dict[str, float] = {}
    started = time.perf_counter()
    for job in _jobs(model, files, folder / "run", cfg, rounds):
        t0 = time.perf_counter()
        done = subprocess.run(["fst", *job], env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"fst {job[0]} failed:\n{done.stderr}")
        times[job[0]] = times.get(job[0], 0.0) + time.perf_counter() - t0
    return {"wall_s": time.perf_counter() - started, "per_stage_s": times}


def run_peer(model: Path, files: dict, folder: Path, rounds: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=THREADS)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--peer", str(model), str(files["data"]), str(folder),
                           str(rounds)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"the peer failed:\n{done.stderr}")
    return {"wall_s": wall}


def peer(model: Path, data: Path, folder: Path, rounds: int) -> None:
    """TRL's online loop (this process is the peer's whole run)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOTrainer

    from fst import settings
    from fst.config import problems_per_round
    from fst.data import load_split, round_problems
    from fst.slow import grpo_args
    from fst.tasks import score_reply

    cfg = default_config()
    slow = settings.slow(cfg, SEED)
    train = load_split(data, "train")
    problems = [p for r in range(rounds) for p in round_problems(train, SEED, r, problems_per_round(cfg))]
    by_id = {p.id: p for p in problems}
    system = cfg["prompts"]["seed"]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "system", "content": system}, {"role": "user", "content": p.question}],
         "problem_id": p.id} for p in problems
    ])

    def reward(prompts, completions, problem_id, **_):
        pairs = zip(problem_id, completions, strict=True)
        return [score_reply(by_id[i], completion[0]["content"]).reward for i, completion in pairs]

    args = grpo_args(slow, folder / "peer", rounds - 1)  # max_steps = rounds x T
    args.save_strategy = "no"
    model_ = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
    trainer = GRPOTrainer(model=model_, reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=slow.lora.to_peft())
    trainer.train()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        model, data, folder, rounds = sys.argv[2:6]
        peer(Path(model), Path(data), Path(folder), int(rounds))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-warm", action="store_true", help="every job in its own cold process")
    args = parser.parse_args()
    from fst import warm

    model, cfg = base_model(args.model), default_config()
    rows: dict[str, list] = {"ours": [], "peer": []}
    server_start = None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = prepare(tmp, cfg)
        socket = None
        if not args.no_warm:
            t0 = time.perf_counter()
            socket = warm.start(str(tmp / "warm.log"))
            env = dict(os.environ, OMP_NUM_THREADS=THREADS, FST_WARM_RUNNER=socket)
            # the first job waits for the runner's imports
            subprocess.run(["fst", "config"], env=env, check=True, capture_output=True)
            server_start = time.perf_counter() - t0
        for repeat in range(args.repeats):
            for side in ("ours", "peer") if repeat % 2 == 0 else ("peer", "ours"):
                folder = tmp / f"{side}{repeat}"
                folder.mkdir()
                result = (run_ours(model, files, folder, cfg, args.rounds, socket) if side == "ours"
                          else run_peer(model, files, folder, args.rounds))
                rows[side].append(result)
                print(f"{side} run {repeat}: {result['wall_s']:.1f} s", flush=True)
        warm.stop(socket)
    ours = statistics.median(r["wall_s"] for r in rows["ours"])
    theirs = statistics.median(r["wall_s"] for r in rows["peer"])
    stages = {name: statistics.median(r["per_stage_s"][name] for r in rows["ours"])
              for name in rows["ours"][0]["per_stage_s"]}
    print(f"\narm rl, {args.rounds} rounds x {cfg['slow']['steps_per_round']} steps "
          f"({'warm runner' if socket else 'cold processes'}):")
    print(f"  ours  {ours:7.1f} s   ({', '.join(f'{k} {v:.1f} s' for k, v in stages.items())})")
    print(f"  peer  {theirs:7.1f} s   (TRL GRPOTrainer online, one process)")
    if server_start is not None:
        print(f"  warm runner start (once per workflow run): {server_start:.1f} s")
    print(f"  ratio ours / peer: {ours / theirs:.2f}   (target <= 1.25)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "rounds": args.rounds, "warm_runner": bool(socket), "warm_runner_start_s": server_start,
        "ours_s": ours, "peer_s": theirs, "ratio": ours / theirs, "ours_per_stage_s": stages, "runs": rows,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }, indent=2))


if __name__ == "__main__":
    main()
