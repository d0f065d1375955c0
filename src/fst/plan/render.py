"""The plan as readable text tables (what `fst plan` prints)."""

from __future__ import annotations

EVALUATION_LABELS = {
    "validation": "validation", "kl_context": "KL context", "other_tasks": "other tasks",
    "ood": "out-of-domain", "test": "test", "decomposition": "decomposition", "post_hoc": "post-hoc",
}


def _n(value: int | float) -> str:
    return f"{value:,.0f}"


def _table(rows: list[list[str]], text: tuple[int, ...] = (0,)) -> list[str]:
    """Columns padded to their widest cell: the `text` columns left-aligned, numbers right-aligned."""
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(max(map(len, rows)))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) if i in text else cell.rjust(widths[i]) for i, cell in enumerate(row)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines


def _header(plan: dict) -> list[str]:
    first = next(iter(plan["points"].values()))
    names = ", ".join(first["runs"])
    seeds = first["seeds"]
    points = len(plan["points"])
    return [
        f"Plan of {plan['config']}: experiment '{plan['experiment']}'"
        + (f" (--config {' '.join(plan['overrides'])})" if plan["overrides"] else ""),
        f"  {points} sweep point{'s' * (points > 1)} × {len(first['runs'])} runs ({names}) × "
        f"{seeds} seed{'s' * (seeds > 1)}; model {plan['model']}, hours on {plan['device']} (--device to "
        "choose)",
    ]


def _jobs(jobs: dict | None) -> list[str]:
    if jobs is None:
        return []
    if "error" in jobs:
        return ["", f"Jobs: unknown ({jobs['error']})"]
    rows = [["rule", "jobs"], *([rule, _n(n)] for rule, n in jobs["rules"].items())]
    rows.append(["total", _n(jobs["total"])])
    return ["", f"Jobs: {_n(jobs['total'])}, from `{jobs['command']}` (the whole DAG, done jobs included)",
            *_table(rows)]


def _rollouts(total: dict) -> list[str]:
    ev = total["evaluation"]
    parts = ", ".join(f"{EVALUATION_LABELS[name]} {_n(n)}" for name, n in ev.items() if n)
    gepa = (f"{total['gepa_rounds']} GEPA rounds: budget {_n(total['gepa_budget_calls'])} + re-scoring "
            f"{_n(total['gepa_rescoring_calls'])}; ≤ {_n(total['gepa_metric_calls_max'])} with GEPA's "
            f"overshoot of its cap")
    rows = [
        ["RL rollouts (rollout stage)", _n(total["rl_rollouts"]),
         "slow.steps_per_round × slow.batch_size a round"],
        ["GEPA metric calls", _n(total["gepa_metric_calls"]), gepa],
        ["evaluation samples", _n(total["evaluation_samples"]), parts],
        ["total", _n(total["policy_rollouts"]), f"≤ {_n(total['policy_rollouts_max'])}"],
    ]
    return ["", "Policy rollouts (completions of the policy; at most: the sample cache shares many "
            "evaluation draws)", *_table(rows, (0, 2))]


def _reflection(plan: dict) -> list[str]:
    total, first = plan["total"], next(iter(plan["points"].values()))
    per_call = first["tokens"]["reflection_input_tokens_per_call"]
    rows = [
        ["calls", f"≤ {_n(total['reflection_calls'])}",
         f"ceil(fast.budget / (2 × reflection_minibatch_size)) a GEPA round; hard ceiling "
         f"{_n(total['reflection_calls_ceiling'])} (replies with no usable prompt, retried once)"],
        ["input tokens", f"≈ {_n(total['reflection_input_tokens'])}",
         f"≈ {_n(per_call)} a call: GEPA's template, the current prompt, the minibatch's rollouts and "
         f"feedback"],
        ["output tokens", f"≤ {_n(total['reflection_output_tokens'])}", "reflection.max_tokens a call"],
    ]
    return ["", "Reflection calls (GEPA proposals; upper bounds of GEPA 0.1.4's loop)", *_table(rows, (0, 2))]


def _hours(plan: dict) -> list[str]:
    first = next(iter(plan["points"].values()))["tokens"]
    estimate, device = plan["estimate"], plan["device"]
    lines = ["", "Tokens and hours (upper bounds: every completion at rollout.max_new_tokens; prompt ≈ "
             f"{first['prompt_tokens']} tokens: {first['prompt_tokens_how']})",
             f"  policy tokens ≤ {_n(plan['total']['policy_tokens'])} (policy rollouts × (prompt + "
             f"max_new_tokens))"]
    rows = [["stage", "tokens", "tok/s", "figure", f"{device}-hours", "source"]]
    for row in estimate["stages"]:
        figure = row["figure"]
        rows.append([row["stage"], _n(row["tokens"]), f"{figure['tokens_per_s']:g}" if figure else "-",
                     figure["kind"] if figure else "none", f"{row['hours']:.2f}" if figure else "-",
                     figure["source"] if figure else ""])
    if estimate["hours"] is not None:
        rows.append(["total", "", "", "", f"{estimate['hours']:.2f}",
                     "(start-up and model loading only as far as measured figures hold them)"])
    return lines + _table(rows, (0, 3, 5)) + [f"  {message}" for message in estimate["missing"]]


def _points(plan: dict) -> list[str]:
    if len(plan["points"]) == 1:
        return []
    rows = [["point", "RL rollouts", "GEPA calls ≤", "eval samples", "reflection ≤", "policy tokens ≤"]]
    for name, point in plan["points"].items():
        total = point["total"]
        rows.append([name, _n(total["rl_rollouts"]), _n(total["gepa_metric_calls_max"]),
                     _n(total["evaluation_samples"]), _n(total["reflection_calls"]),
                     _n(point["tokens"]["policy_tokens"])])
    return ["", "Per sweep point (all runs and seeds)", *_table(rows)]


def render(plan: dict) -> str:
    """The plan as readable tables."""
    lines = [*_header(plan), *_jobs(plan.get("jobs")), *_rollouts(plan["total"]), *_reflection(plan),
             *_hours(plan), *_points(plan)]
    return "\n".join(lines) + "\n"
