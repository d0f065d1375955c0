"""`fst plan`: its counts against hand counts on small configs, its hours against a figures file, and
its job count against Snakemake's own dry run."""

from __future__ import annotations

import json
import math

import yaml

from fst.cli import main
from fst.plan import make_plan
from fst.plan.figures import FIGURES_PATH, load_figures
from fst.plan.jobs import parse_job_stats

SEED_PROMPT = "Answer with one number and nothing else."  # 40 characters: 10 tokens at 4 characters each


def _problems_file(tmp_path):
    """30 problems whose questions are 40 characters each (10 tokens at 4 characters a token)."""
    rows = [
        {"question": f"Problem {i:02d}: what is {i} plus 1?".ljust(40, "."), "answer": i + 1,
         "scoring": "numeric"}
        for i in range(30)
    ]
    assert {len(row["question"]) for row in rows} == {40}
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _small(tmp_path, **changes) -> dict:
    """3 arms, 2 rounds, 1 seed, on the user's file, with claims out of domain; every size small."""
    config = {
        "experiment": "plan-small",
        "arms": ["fst", "rl", "gepa"],
        "seeds": [0],
        "rounds": 2,
        "prompts": {"seed": SEED_PROMPT},
        "rollout": {"group_size": 2, "max_new_tokens": 8},
        "slow": {"steps_per_round": 2, "batch_size": 4},  # 2 × 4 / G 2 = 4 problems, 8 rollouts a round
        "fast": {"population_size": 2, "budget": 6, "anchors": 4, "pareto_problems": 3,
                 "reflection_minibatch_size": 2},
        "reflection": {"max_tokens": 16},
        "tasks": {"data_file": str(_problems_file(tmp_path)), "ood": ["claims"],
                  "sizes": {"train": 16, "val": 4, "test": 3}},
        "evaluation": {"k": 2, "ood_problems": 2},
        "report": {"decomposition": True, "post_hoc_gepa": True},
    }
    return config | changes


def _plan(tmp_path, config, **options) -> dict:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(config))
    return make_plan([path], dry_run=False, **options)


def test_counts_of_a_small_config_by_hand(tmp_path):
    total = _plan(tmp_path, _small(tmp_path))["total"]
    # RL rollouts: arms fst and rl train weights, 2 rounds × (2 steps × 4 completions) = 16 each
    assert total["rl_rollouts"] == 2 * 16
    # GEPA rounds: fst rounds 0 and 1, gepa rounds 0 and 1, rl's post-hoc round 2 = 5
    assert total["gepa_rounds"] == 5
    assert total["gepa_budget_calls"] == 5 * 6
    # re-scoring on the Pareto set of 3: fst r0 the seed (1 × 3), fst r1 K = 2 members under new weights
    # (2 × 3), rl post-hoc the seed (1 × 3), gepa r0 the seed (1 × 3), gepa r1 continues r0's search (0)
    assert total["gepa_rescoring_calls"] == 3 + 6 + 3 + 3 + 0
    assert total["gepa_metric_calls"] == 30 + 15
    # GEPA may overshoot its cap by one last iteration: 2 minibatches of 2 + the Pareto set of 3 - 1 = 6
    assert total["gepa_metric_calls_max"] == 45 + 5 * 6
    # reflection: a proposal costs ≥ 2 × 2 metric calls, ceil(6 / 4) = 2 a round; a reply with no
    # prompt costs 2 and is retried once: ceiling 2 × ceil(6 / 2) = 6 a round
    assert total["reflection_calls"] == 5 * 2
    assert total["reflection_calls_ceiling"] == 5 * 6
    # evaluation: 3 points (after 0, 1, 2 rounds) × 4 validation problems × k 2 = 24 per run
    assert total["evaluation"] == {
        "validation": 3 * 24,
        "kl_context": 2 * 8,  # fst after 1 and 2 rounds: trained weights and a prompt GEPA may have changed
        "other_tasks": 0,
        "ood": 3 * 3 * 2,  # 3 runs × 3 points × claims' first 2 problems
        "test": 3 * 2 * 3 * 2,  # 3 runs × (final, selected) × 3 test problems × k 2
        "decomposition": 4 * 8,  # fst: {base, trained} × {seed, evolved} × 4 × 2
        "post_hoc": 8 + 8 + 2,  # rl after post-hoc GEPA: validation, KL context, out of domain
    }
    assert total["evaluation_samples"] == 72 + 16 + 18 + 36 + 32 + 18 == 192
    assert total["policy_rollouts"] == 32 + 45 + 192
    assert total["policy_rollouts_max"] == 32 + 75 + 192


def test_tokens_of_a_small_config_by_hand(tmp_path):
    point = next(iter(_plan(tmp_path, _small(tmp_path))["points"].values()))
    tokens = point["tokens"]
    # prompt: chat template 16 + seed prompt 40 / 4 + question 40 / 4
    assert tokens["prompt_tokens"] == 16 + 10 + 10
    # policy tokens: 299 rollouts at most × (36 + 8)
    assert tokens["policy_tokens"] == 299 * 44
    # a reflection request: GEPA's template (942 characters: 236 tokens), the current prompt (at most
    # max(10, reflection.max_tokens 16)), 2 rollouts × (16 headings + 10 question + 8 reply + 40 feedback)
    from gepa.strategies.instruction_proposal import InstructionProposalSignature

    assert len(InstructionProposalSignature.default_prompt_template) == 942
    assert tokens["reflection_input_tokens_per_call"] == 236 + 16 + 2 * 74
    assert tokens["reflection_input_tokens"] == 10 * 400
    assert tokens["reflection_output_tokens"] == 10 * 16
    assert tokens["stages"] == {
        "rollout": 32 * 8,
        "gepa": 75 * 8,
        "evaluate": 192 * 8,
        "reflection": 10 * 16,  # reflection.backend local: the base model on the same device
        "slow_lora": 32 * 44,
    }


def test_gepa_every_other_round_over_a_continual_schedule_by_hand(tmp_path):
    config = _small(
        tmp_path, arms=["fst", "gepa"], kinds=["continual"], rounds=1,
        continual={"schedule": ["arithmetic", "claims"], "rounds_per_stage": 2},
    )
    config["fast"]["every"] = 2
    config["tasks"] = {"ood": [], "sizes": {"train": 16, "val": 4, "test": 3}}
    total = _plan(tmp_path, config)["total"]
    # continual-fst: 4 rounds, GEPA in rounds 0 and 2 (every 2nd round of each 2-round stage);
    # continual-gepa: GEPA in all 4 rounds
    assert total["gepa_rounds"] == 2 + 4
    # fst: r0 the seed (3), r2 K = 2 members under new weights (6); gepa: r0 the seed (3), r1 continues,
    # r2 a new task starts a fresh search with the carried population (6), r3 continues
    assert total["gepa_rescoring_calls"] == 3 + 6 + 3 + 6
    assert total["gepa_metric_calls"] == 6 * 6 + 18
    assert total["rl_rollouts"] == 4 * 8  # fst only
    # 5 evaluation points × 4 × 2 per run, each also on the schedule's other task; no test split
    assert total["evaluation"] == {
        "validation": 2 * 40, "kl_context": 4 * 8, "other_tasks": 2 * 40, "ood": 0, "test": 0,
        "decomposition": 0, "post_hoc": 0,
    }


def test_plasticity_runs_by_hand(tmp_path):
    config = _small(tmp_path, arms=["fst", "rl"], kinds=["main", "plasticity"],
                    plasticity={"task": "claims", "rounds": 2})
    config["tasks"]["ood"] = []
    config["report"] = {"decomposition": False, "post_hoc_gepa": False}
    total = _plan(tmp_path, config)["total"]
    # main fst and rl, plasticity from base, fst and rl: 5 runs × 2 rounds × 8 rollouts
    assert total["rl_rollouts"] == 5 * 16
    assert total["gepa_rounds"] == 2 and total["gepa_metric_calls"] == 2 * 6 + 3 + 6  # main fst only
    # validation 5 runs × 3 points × 8; KL context for main fst after 1 and 2 rounds only (phase B keeps
    # the seed prompt); the test split of the 2 main runs
    assert total["evaluation"]["validation"] == 5 * 24
    assert total["evaluation"]["kl_context"] == 2 * 8
    assert total["evaluation"]["test"] == 2 * 12
    assert total["evaluation_samples"] == 120 + 16 + 24


def test_sweep_points_and_seeds_multiply_the_counts(tmp_path):
    config = _small(tmp_path, seeds=[0, 1], sweep={"slow.learning_rate": [1.0e-4, 2.0e-4]})
    plan = _plan(tmp_path, config)
    assert len(plan["points"]) == 2
    total = plan["total"]
    # 2 points × 2 seeds = 4 times the single-seed counts above
    assert total["rl_rollouts"] == 4 * 32
    assert total["gepa_metric_calls"] == 4 * 45
    assert total["evaluation_samples"] == 4 * 192
    assert total["reflection_calls"] == 4 * 10
    assert total["policy_tokens"] == 4 * 299 * 44


def test_a_swept_budget_changes_its_point_only(tmp_path):
    plan = _plan(tmp_path, _small(tmp_path, sweep={"fast.budget": [6, 10]}))
    by_budget = {name.split("~")[1]: point["total"] for name, point in plan["points"].items()}
    # budget 10: 5 rounds × 10 + the same re-scoring 15; ceil(10 / 4) = 3 proposals a round
    assert by_budget["10"]["gepa_metric_calls"] == 5 * 10 + 15
    assert by_budget["10"]["reflection_calls"] == 5 * 3
    assert plan["total"]["gepa_metric_calls"] == 45 + 65
    assert plan["total"]["rl_rollouts"] == 2 * 32


def _figures(tmp_path, stages: dict[str, float]):
    path = tmp_path / "throughput.yaml"
    figures = [
        {"model": "packaged:smollm2", "device": "box", "stage": stage, "tokens_per_s": rate,
         "kind": "measured" if stage == "rollout" else "estimate", "source": f"test {stage}", "basis": "test"}
        for stage, rate in stages.items()
    ]
    path.write_text(yaml.safe_dump({"models": {"packaged:smollm2": []}, "figures": figures}))
    return path


def test_hours_are_tokens_over_the_figures(tmp_path):
    # seconds: rollout 256 / 128 = 2, gepa 600 / 60 = 10, evaluate 1536 / 512 = 3,
    # reflection 160 / 16 = 10, slow 1408 / 704 = 2: 27 s
    rates = {"rollout": 128, "gepa": 60, "evaluate": 512, "reflection": 16, "slow_lora": 704}
    plan = _plan(tmp_path, _small(tmp_path), figures_path=_figures(tmp_path, rates))
    estimate = plan["estimate"]
    assert plan["device"] == "box"  # the one device kind with figures for the model
    assert {row["stage"]: round(row["hours"] * 3600, 9) for row in estimate["stages"]} == {
        "rollout": 2, "gepa": 10, "evaluate": 3, "reflection": 10, "slow_lora": 2,
    }
    assert math.isclose(estimate["hours"], 27 / 3600) and estimate["missing"] == []
    assert {row["stage"]: row["figure"]["kind"] for row in estimate["stages"]}["rollout"] == "measured"


def test_no_figure_gives_the_counts_and_says_so(tmp_path):
    rates = {"rollout": 128, "gepa": 60, "evaluate": 512, "slow_lora": 704}  # no reflection figure
    plan = _plan(tmp_path, _small(tmp_path), figures_path=_figures(tmp_path, rates))
    assert plan["estimate"]["hours"] is None
    assert plan["estimate"]["missing"] == [
        "no throughput figure for packaged:smollm2 on box (stage reflection): add one to "
        "benchmarks/throughput.yaml"
    ]
    plan = _plan(tmp_path, _small(tmp_path), figures_path=_figures(tmp_path, rates), device="tpu")
    assert plan["estimate"]["missing"] == [
        "no throughput figure for packaged:smollm2 on tpu: add one to benchmarks/throughput.yaml"
    ]
    assert plan["total"]["rl_rollouts"] == 32  # the counts are there all the same


def test_the_throughput_file_says_how_each_figure_was_obtained():
    models, figures = load_figures(FIGURES_PATH)
    assert {f.kind for f in figures} <= {"measured", "estimate"}
    assert all(f.tokens_per_s > 0 and f.source and len(f.basis) > 80 for f in figures)
    assert all(f.model in models for f in figures)
    keys = [(f.model, f.device, f.stage) for f in figures]
    assert len(keys) == len(set(keys))
    # nothing on a GPU has been measured: every Qwen3-8B figure is an estimate
    qwen = [f for f in figures if f.model == "Qwen/Qwen3-8B"]
    assert qwen and {f.kind for f in qwen} == {"estimate"}
    assert {f.stage for f in figures if f.model == "packaged:smollm2" and f.kind == "measured"} >= {
        "rollout", "evaluate", "slow_lora"
    }


def test_parse_job_stats_reads_snakemakes_table():
    text = "Building DAG of jobs...\nJob stats:\njob      count\n-----  -------\na            3\n"
    text += "all          1\ntotal        4\n\nJob stats:\njob      count\n"
    assert parse_job_stats(text) == {"a": 3, "all": 1, "total": 4}
    assert parse_job_stats("Nothing to be done (all requested files are present and up to date).") == {
        "total": 0
    }


def test_fst_plan_counts_jobs_with_snakemakes_dry_run(tmp_path, capsys):
    """One real dry run (Snakemake from the repository root) on the small config, against a hand count."""
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(_small(tmp_path)))
    out = tmp_path / "plan.json"
    main(["plan", "--configfile", str(path), "--json", str(out)])
    jobs = json.loads(out.read_text())["jobs"]
    assert jobs["rules"] == {
        "base_model": 1,
        "tasks": 2,  # the user's file and claims (out of domain)
        "seed_population": 1,
        "fast": 3 * 2 + 1,  # 3 runs × 2 rounds (rl's pass through) + rl's post-hoc GEPA round
        "rollout": 2 * 2,  # fst and rl × 2 rounds
        "score": 2 * 2,
        "slow": 2 * 2,
        "evaluate": 3 * 3,  # 3 runs × after 0, 1, 2 rounds
        "evaluate_posthoc": 1,
        "evaluate_test": 3,
        "decompose": 1,
        "track": 3 * 3,
        "summary": 1,
        "report": 1,
        "sync_tracking": 1,
        "all": 1,
    }
    assert jobs["total"] == 50
    printed = capsys.readouterr().out
    assert "Jobs: 50" in printed and "GEPA metric calls" in printed and "cpu-2core-hours" in printed
