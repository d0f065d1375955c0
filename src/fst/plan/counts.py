"""Counts of one run (one seed): GEPA rounds, metric and reflection calls, RL rollouts, evaluation
samples; and sums of counts over runs, seeds and sweep points."""

from __future__ import annotations

import math

from fst.config import problems_per_round
from fst.kinds import Run

# ---- GEPA rounds, metric calls and reflection calls ----


def _gepa_flags(cfg: dict) -> tuple[int, bool]:
    return cfg["fast"]["every"], cfg["report"]["post_hoc_gepa"]


def has_post_hoc(run: Run, cfg: dict) -> bool:
    """Arm rl's main run gets a GEPA round on its final weights (round `rounds`, report.post_hoc_gepa)."""
    return cfg["report"]["post_hoc_gepa"] and run.kind == "main" and run.arm == "rl"


def gepa_rounds(run: Run, cfg: dict) -> list[int]:
    """The rounds of `run` whose fast stage runs GEPA (the others pass the population through)."""
    every, post_hoc = _gepa_flags(cfg)
    indices = range(run.rounds + has_post_hoc(run, cfg))
    return [r for r in indices if run.runs_gepa(r, every, post_hoc)]


def rescoring_calls(run: Run, r: int, cfg: dict) -> int:
    """Metric calls re-scoring Φ_c on the Pareto set before GEPA round r searches (fst.fast.start_state):
    none when it continues the previous round's search (same task, unchanged weights: arm gepa), else
    every member: the seed alone before the run's first GEPA round, at most K after it."""
    every, post_hoc = _gepa_flags(cfg)
    if run.continues_gepa(r, every, post_hoc) and not run.trains_weights:
        return 0
    evolved = any(run.runs_gepa(q, every, post_hoc) for q in range(r))
    members = cfg["fast"]["population_size"] if evolved else 1
    return members * cfg["fast"]["pareto_problems"]


def gepa_overshoot(cfg: dict) -> int:
    """Metric calls a GEPA round may spend past its cap: GEPA checks the cap between iterations, and one
    iteration costs the parent's and the child's minibatch and, if the child is accepted, the Pareto set."""
    return 2 * cfg["fast"]["reflection_minibatch_size"] + cfg["fast"]["pareto_problems"] - 1


def reflection_bounds(cfg: dict) -> tuple[int, int]:
    """Reflection calls of one GEPA round: (proposals, ceiling). A proposal costs at least 2b metric calls
    (the parent's and the child's minibatch of b), so at most ceil(budget / 2b) proposals; a reply with no
    usable prompt costs only the parent's b, and GEPA retries a failed reflection once in the same
    iteration, so never more than 2·ceil(budget / b) calls."""
    budget, b = cfg["fast"]["budget"], cfg["fast"]["reflection_minibatch_size"]
    return math.ceil(budget / (2 * b)), 2 * math.ceil(budget / b)


def gepa_counts(run: Run, cfg: dict) -> dict:
    """GEPA rounds, metric calls (budget + re-scoring; `_max` with each round's overshoot) and reflection
    calls of one run."""
    rounds = gepa_rounds(run, cfg)
    budget = cfg["fast"]["budget"] * len(rounds)
    rescoring = sum(rescoring_calls(run, r, cfg) for r in rounds)
    proposals, ceiling = reflection_bounds(cfg)
    return {
        "gepa_rounds": len(rounds),
        "gepa_budget_calls": budget,
        "gepa_rescoring_calls": rescoring,
        "gepa_metric_calls": budget + rescoring,
        "gepa_metric_calls_max": budget + rescoring + len(rounds) * gepa_overshoot(cfg),
        "reflection_calls": len(rounds) * proposals,
        "reflection_calls_ceiling": len(rounds) * ceiling,
    }


# ---- RL rollouts and evaluation samples ----


def rl_rollouts(run: Run, cfg: dict) -> int:
    """Rollout-stage completions: every round of a weight-training run, problems_per_round × G."""
    if not run.trains_weights:
        return 0
    return run.rounds * problems_per_round(cfg) * cfg["rollout"]["group_size"]


def kl_context(run: Run, k: int, cfg: dict) -> bool:
    """Whether the evaluation after k rounds also samples the seed prompt for the KL (fst.evaluate.evaluate):
    weights that are not the base model's, and a prompt a GEPA round before k may have changed."""
    every, post_hoc = _gepa_flags(cfg)
    trained = (k > 0 and run.trains_weights) or run.init is not None
    return trained and any(run.runs_gepa(q, every, post_hoc) for q in range(k))


def ood_draws(run: Run, cfg: dict) -> int:
    """Out-of-domain draws of one evaluation: the first ood_problems of the validation split, greedy, once,
    of every tasks.ood family the run does not train on."""
    families = [task for task in cfg["tasks"]["ood"] if task not in run.stages]
    return len(families) * min(cfg["evaluation"]["ood_problems"], cfg["tasks"]["sizes"]["val"])


def evaluation_counts(run: Run, cfg: dict) -> dict:
    """Evaluation samples of one run, by what draws them (workflow/rules/evaluate.smk)."""
    val_k = cfg["tasks"]["sizes"]["val"] * cfg["evaluation"]["k"]
    points = range(run.rounds + 1)  # after 0..rounds rounds
    decomposed = run.kind == "main" and run.arm == "fst" and cfg["report"]["decomposition"]
    return {
        "validation": len(points) * val_k,
        "kl_context": sum(val_k for k in points if kl_context(run, k, cfg)),
        "other_tasks": sum(len(run.other_tasks(k)) for k in points) * val_k,
        "ood": len(points) * ood_draws(run, cfg),
        # the final and the selected round's weights and prompt (once when they are the same round)
        "test": 2 * cfg["tasks"]["sizes"]["test"] * cfg["evaluation"]["k"] if run.kind == "main" else 0,
        "decomposition": 4 * val_k if decomposed else 0,  # {base, trained} × {seed, evolved}
        "post_hoc": 2 * val_k + ood_draws(run, cfg) if has_post_hoc(run, cfg) else 0,
    }


def run_counts(run: Run, cfg: dict) -> dict:
    """Every count of one run (one seed)."""
    evaluation = evaluation_counts(run, cfg)
    counts = {"rl_rollouts": rl_rollouts(run, cfg), **gepa_counts(run, cfg), "evaluation": evaluation}
    counts["evaluation_samples"] = sum(evaluation.values())
    policy = counts["rl_rollouts"] + counts["evaluation_samples"]
    counts["policy_rollouts"] = policy + counts["gepa_metric_calls"]
    counts["policy_rollouts_max"] = policy + counts["gepa_metric_calls_max"]
    return counts


def add_counts(total: dict, counts: dict, times: int = 1) -> dict:
    """`total` plus `times` × `counts`, nested dicts summed key by key."""
    for key, value in counts.items():
        if isinstance(value, dict):
            add_counts(total.setdefault(key, {}), value, times)
        else:
            total[key] = total.get(key, 0) + value * times
    return total
