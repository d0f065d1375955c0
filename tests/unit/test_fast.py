"""The fast stage: top-K population from GEPA's Pareto front, GEPA state across processes and rounds,
rejected reflection replies, a reflection endpoint that is down, the API key kept out of artifacts, and
arm gepa's rounds: the search continued under unchanged weights, every metric call kept across a kill
and charged once.

GEPA really runs here (gepa 0.1.4) on the tiny random Llama; its metric calls are real rollouts. The
OpenAI-compatible reflection backend talks to a real HTTP server on 127.0.0.1 (tests/loopback.py).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from loopback import Endpoint

from fst.artifacts import write_parquet
from fst.data import build_task_data, load_split
from fst.fast import (
    FastSettings,
    GuardedReflection,
    PolicyAdapter,
    anchor_and_pareto_sets,
    run_fast_round,
    select_population,
)
from fst.generation import SamplingSettings
from fst.population import Member, load_population, save_population, seed_population
from fst.reflection import OpenAICompatibleLM, ReflectionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")
GEPA_CHOICES = {"candidate_selection_strategy": "pareto", "frontier_type": "instance",
                "module_selector": "round_robin", "batch_sampler": "epoch_shuffled",
                "acceptance_criterion": "strict_improvement", "skip_perfect_score": True,
                "perfect_score": 1.0, "use_merge": False, "cache_evaluation": False,
                "reflection_prompt_template": None}

SAMPLING = {"max_new_tokens": 8, "temperature": 1.0, "batch_size": 32}
ANCHORS, PARETO, MINIBATCH, BUDGET = 4, 3, 2, 10
MEMBERS = [
    Member("seed", "You are a careful math tutor. End your reply with the final number.", None, 0.5, None, 0),
    Member("r0-c1", "Add or subtract the numbers, then give only the result.", "seed", 0.5, 0.0, 0),
]
KEY_ENV = "FST_TEST_FAST_REFLECTION_KEY"
KEY = "sk-fast-test-c0ffee5ec4e7-NEVER-WRITE"


def _proposal(n: int) -> str:
    """A valid reflection reply; each request gets its own text, so candidates are distinguishable."""
    return f"Here is the improved instruction:\n```\nProposal {n}: compute the sum step by step.\n```"


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "arithmetic.parquet"
    write_parquet(build_task_data("arithmetic", 0, {"train": 12, "val": 2, "test": 2}, None), path)
    return path


def _sets(data_file: Path, round_index: int):
    return anchor_and_pareto_sets(load_split(data_file, "train"), 0, round_index, ANCHORS, PARETO)


def _rescoring(records, members, pareto) -> list:
    """Records that score a member of Φ on the Pareto set: the start-of-round re-scoring calls."""
    texts, ids = {m.text for m in members}, {p.id for p in pareto}
    return [r for r in records if r["system_text"] in texts and r["problem_id"] in ids]


def _overshoot() -> int:
    # GEPA checks its budget between iterations: one iteration costs a parent minibatch, a child
    # minibatch and, when the child is accepted, the whole Pareto set.
    return 2 * MINIBATCH + PARETO


# --------------------------------------------------------------------------------------------------
# 1. The new population from a known Pareto front


def test_select_population_takes_the_top_k_of_the_front_with_lineage():
    previous = [
        Member("seed", "S", None, 0.5, 0.1, 0),
        Member("r1-c1", "A", "seed", 0.5, 0.3, 1),
    ]
    candidates = ["S", "A", "B", "C", "D", "E"]
    parents = [[None], [0], [1], [0], [2], [0]]
    scores = [0.2, 0.7, 0.9, 0.95, 0.6, 0.6]
    # Candidate 3 has the best mean score but is best on no instance: not on the front.
    front = {0: {1, 2}, 1: {2, 5}, 2: {4, 1}, 3: {0}}

    chosen = select_population(candidates, parents, scores, front, previous, k=4, round_index=3)
    assert chosen == [
        Member("r3-c2", "B", "r1-c1", 0.25, 0.9, 3),
        Member("r1-c1", "A", "seed", 0.25, 0.7, 1),  # carried: id, parent, round_created kept; new score
        Member("r3-c4", "D", "r3-c2", 0.25, 0.6, 3),
        Member("r3-c5", "E", "seed", 0.25, 0.6, 3),  # ties keep GEPA's order (4 before 5)
    ]
    assert select_population(candidates, parents, scores, front, previous, 1, 3) == [
        Member("r3-c2", "B", "r1-c1", 1.0, 0.9, 3)
    ]
    everyone = select_population(candidates, parents, scores, front, previous, 10, 3)
    assert [m.text for m in everyone] == ["B", "A", "D", "E", "S"]  # the whole front, never "C"
    assert {m.weight for m in everyone} == {0.2}
    assert everyone[-1] == Member("seed", "S", None, 0.2, 0.2, 0)


# --------------------------------------------------------------------------------------------------
# 2. GEPA state across processes (a retried round) and across rounds (new weights)

_FIRST_ATTEMPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from fst.data import load_split
from fst.fast import FastSettings, GuardedReflection, PolicyAdapter, anchor_and_pareto_sets, run_fast_round
from fst.generation import SamplingSettings
from fst.policy import load_policy
from fst.population import load_population
from fst.reflection import ReflectionError

a = json.loads(sys.argv[1])
model, tokenizer = load_policy(Path(a["policy"]))
anchors, pareto = anchor_and_pareto_sets(load_split(Path(a["data"]), "train"), 0, 0, *a["sets"])

def down(prompt):
    raise ReflectionError("reflection endpoint down")

reflection = GuardedReflection(down)
adapter = PolicyAdapter(model, tokenizer, SamplingSettings(**a["sampling"]), a["seed"])
population, stats = run_fast_round(
    adapter, reflection, load_population(Path(a["members"])), anchors, pareto, Path(a["run_dir"]), 0,
    FastSettings(**a["fast"]),
)
records = [{k: r[k] for k in ("problem_id", "system_text", "completion_ids")} for r in adapter.records]
print(json.dumps({"stats": stats, "records": records, "unavailable": reflection.unavailable}))
"""


def test_gepa_state_resumes_across_processes_and_is_rescored_under_new_weights(
    tiny, tiny_model_dir, data_file, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="fst")
    model, tokenizer = tiny
    anchors, pareto = _sets(data_file, 0)
    assert not {p.id for p in anchors} & {p.id for p in pareto}
    members_file = tmp_path / "population0.json"
    save_population(MEMBERS, members_file, 0)
    fast = FastSettings(BUDGET, 2, MINIBATCH, seed=11, proposer="reflective")
    run_dir = tmp_path / "gepa_state" / "round0"
    run_dir.mkdir(parents=True)
    (run_dir / "gepa.stop").touch()  # left over from an earlier stop: must not end this round

    # Process 1: round 0 with the reflection backend down. GEPA stops early; its state stays.
    args = {
        "policy": str(tiny_model_dir),
        "data": str(data_file),
        "sets": [ANCHORS, PARETO],
        "members": str(members_file),
        "sampling": SAMPLING,
        "seed": 11,
        "run_dir": str(run_dir),
        "fast": asdict(fast),
    }
    done = _run_script(_FIRST_ATTEMPT, args)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    rescoring = len(MEMBERS) * PARETO
    cap = rescoring + BUDGET
    assert first["unavailable"]
    assert first["stats"]["rescoring_calls"] == rescoring
    assert first["stats"]["max_metric_calls"] == cap
    assert len(_rescoring(first["records"], MEMBERS, pareto)) == rescoring
    assert [(r["system_text"], r["problem_id"]) for r in first["records"][:rescoring]] == [
        (m.text, p.id) for m in MEMBERS for p in pareto
    ]
    spent_first = first["stats"]["metric_calls"]
    assert spent_first == len(first["records"]) < cap  # stopped early: budget left for the retry
    assert (run_dir / "gepa_state.bin").is_file()

    # Process 2 (this one): the same round, same run_dir, reflection back. It resumes.
    replies = iter(range(1, 1000))
    reflection = GuardedReflection(lambda prompt: _proposal(next(replies)))
    adapter = PolicyAdapter(model, tokenizer, SamplingSettings(**SAMPLING), 11)
    population, stats = run_fast_round(adapter, reflection, MEMBERS, anchors, pareto, run_dir, 0, fast)
    assert "resuming this round's GEPA state" in caplog.text
    assert _rescoring(adapter.records, MEMBERS, pareto) == []  # neither the seed nor Φ re-scored
    assert stats["max_metric_calls"] == cap and stats["rescoring_calls"] == rescoring  # cumulative
    assert stats["metric_calls"] == spent_first + len(adapter.records)  # every call counted once
    assert cap <= stats["metric_calls"] < cap + _overshoot()  # a fresh budget would spend BUDGET more
    assert len(adapter.records) < BUDGET
    assert stats["candidates_before"] == len(MEMBERS) and len(reflection.replies) >= 1
    assert 1 <= len(population) <= 2

    # Rerun once more (e.g. outputs deleted after a later failure): budget spent, nothing re-run.
    again = PolicyAdapter(model, tokenizer, SamplingSettings(**SAMPLING), 11)
    population_again, stats_again = run_fast_round(
        again, GuardedReflection(lambda prompt: _proposal(0)), MEMBERS, anchors, pareto, run_dir, 0, fast
    )
    assert again.records == [] and stats_again["metric_calls"] == stats["metric_calls"]
    assert population_again == population

    # Rerun after a config change (a larger budget): the stale state is not resumed, the round restarts.
    bigger = replace(fast, budget=BUDGET + 2)
    fresh = PolicyAdapter(model, tokenizer, SamplingSettings(**SAMPLING), 11)
    _, stats_fresh = run_fast_round(
        fresh, GuardedReflection(lambda prompt: _proposal(0)), MEMBERS, anchors, pareto, run_dir, 0, bigger
    )
    assert "made for another set-up of this round" in caplog.text
    assert [(r["system_text"], r["problem_id"]) for r in fresh.records[:rescoring]] == [
        (m.text, p.id) for m in MEMBERS for p in pareto
    ]  # started afresh: Φ re-scored first
    assert stats_fresh["max_metric_calls"] == rescoring + BUDGET + 2

    # Round 1: new weights, new run_dir. The K members are re-scored under θ_1, first thing.
    new_model = _perturbed(tiny_model_dir)
    anchors1, pareto1 = _sets(data_file, 1)
    assert [p.id for p in pareto1] == [p.id for p in pareto]  # the Pareto set is fixed per run
    adapter1 = PolicyAdapter(new_model, tokenizer, SamplingSettings(**SAMPLING), 12)
    population1, stats1 = run_fast_round(
        adapter1,
        GuardedReflection(lambda prompt: _proposal(next(replies))),
        population,
        anchors1,
        pareto1,
        tmp_path / "gepa_state" / "round1",
        1,
        replace(fast, seed=12),
    )
    k = len(population)
    head = adapter1.records[: k * PARETO]
    assert stats1["rescoring_calls"] == k * PARETO
    assert [(r["system_text"], r["problem_id"]) for r in head] == [
        (m.text, p.id) for m in population for p in pareto
    ]
    # Served by the new weights: the recorded log-probs are θ_1's, not θ_0's (temperature 1, top-p 1).
    for record in head:
        assert _max_logprob_gap(new_model, record) < 1e-3
        assert _max_logprob_gap(model, record) > 1e-2
    # GEPA's state holds those new scores, not the ones earned under θ_0.
    from gepa.core.state import GEPAState

    state = GEPAState.load(str(tmp_path / "gepa_state" / "round1"))
    for i in range(k):
        rewards = [r["reward"] for r in head[i * PARETO : (i + 1) * PARETO]]
        assert [state.prog_candidate_val_subscores[i][j] for j in range(PARETO)] == rewards
    assert stats1["candidates_before"] == k and population1


def _perturbed(model_dir: Path):
    """The tiny model with every weight moved by Gaussian noise (std 0.05, the init is 0.02): a new θ."""
    from fst.policy import load_policy

    model, _ = load_policy(model_dir)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


def _max_logprob_gap(model, record) -> float:
    ids = record["prompt_ids"] + record["completion_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, len(record["prompt_ids"]) - 1 : -1]
    logprobs = torch.log_softmax(logits.float(), -1)
    chosen = logprobs.gather(1, torch.tensor(record["completion_ids"])[:, None])[:, 0]
    return float((chosen - torch.tensor(record["logprobs"])).abs().max())


# --------------------------------------------------------------------------------------------------
# 3. Reflection replies with no usable prompt


def test_junk_reflection_replies_are_rejected_and_gepa_spends_its_budget(
    tiny, data_file, tmp_path, monkeypatch
):
    import gepa

    model, tokenizer = tiny
    anchors, pareto = _sets(data_file, 0)
    asked = {}
    real_optimize = gepa.optimize

    def optimize(**kwargs):  # the real search, its arguments recorded
        asked.update(kwargs)
        return real_optimize(**kwargs)

    monkeypatch.setattr(gepa, "optimize", optimize)
    junk = ["   \n\t ", "```\n```", "ok."]  # blank, an empty fenced block, too short to be a prompt
    server = Endpoint(reply=lambda n: junk[n % len(junk)])
    try:
        lm = OpenAICompatibleLM(
            server.base_url, "reflector", api_key_env=None, max_tokens=32, temperature=1.0, timeout_s=5,
            max_retries=0,
        )
        reflection = GuardedReflection(lm)
        adapter = PolicyAdapter(model, tokenizer, SamplingSettings(**SAMPLING), 21)
        settings = FastSettings(BUDGET, 2, MINIBATCH, 21, "reflective")
        population, stats = run_fast_round(
            adapter, reflection, MEMBERS, anchors, pareto, tmp_path / "gepa", 0, settings
        )
    finally:
        server.close()
    cap = len(MEMBERS) * PARETO + BUDGET
    iterations = stats["gepa_iterations"]
    assert iterations >= 2  # GEPA carried on after a rejected reply
    # GEPA retries a failed batched reflection once per task: one or two replies per iteration.
    assert reflection.rejected == len(server.requests) == lm.usage.calls
    assert iterations <= reflection.rejected <= 2 * iterations
    assert stats["proposals_rejected_unparseable"] == reflection.rejected
    assert [r["accepted_as_prompt"] for r in reflection.replies] == [False] * reflection.rejected
    assert not reflection.unavailable and lm.usage.failures == 0  # junk is not an outage
    assert cap <= stats["metric_calls"] < cap + _overshoot()
    # No junk candidate was ever scored: every rollout used a member's prompt; none was added.
    assert {r["system_text"] for r in adapter.records} <= {m.text for m in MEMBERS}
    assert stats["candidates_after"] == len(MEMBERS) and stats["proposals_accepted"] == 0
    assert [(m.id, m.text, m.parent_id) for m in population] == [(m.id, m.text, m.parent_id) for m in MEMBERS]
    # the search's choices reach GEPA explicitly, none left to a library default
    assert {key: asked[key] for key in GEPA_CHOICES} == GEPA_CHOICES
    assert type(asked["sampling_strategy"]).__name__ == "SingleMutationSampling"
    assert type(asked["selection_strategy"]).__name__ == "AllImprovements"
    assert asked["reflection_minibatch_size"] == MINIBATCH and asked["seed"] == 21


# --------------------------------------------------------------------------------------------------
# 4-5. The CLI stage as the Snakemake rule runs it, with the OpenAI-compatible reflection backend


def _run_script(script: str, argument) -> subprocess.CompletedProcess:
    """A fast-stage attempt in its own process (so that it can die), its argument as JSON."""
    return subprocess.run(
        [sys.executable, "-c", script, json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=240,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def _settings(reflection: dict, gepa_round: bool = True, proposer: str = "reflective") -> str:
    """What workflow/rules/common.smk `fast_settings` produces (config keys of the schema only)."""
    return json.dumps(
        {
            "gepa_round": gepa_round,
            "fast": {
                "every": 1,
                "budget": 6,
                "population_size": 2,
                "anchors": ANCHORS,
                "pareto_problems": PARETO,
                "reflection_minibatch_size": MINIBATCH,
                "proposer": proposer,
            },
            "reflection": reflection,
            "sampling": SAMPLING,
            "backend": "transformers",
            "dtype": "float32",
            "device": "cpu",
        }
    )


def _openai_reflection(base_url: str) -> dict:
    return {
        "backend": "openai",
        "base_url": base_url,
        "model": "reflector-7b",
        "api_key_env": KEY_ENV,
        "max_tokens": 160,
        "temperature": 1.0,
        "timeout_s": 5,
    }


def _fast_argv(
    exp: Path, round_index: int, population_in: Path, model_dir: Path, data: Path, settings: str,
    arm: str = "fst", previous: bool = False,
):  # fmt: skip
    """The argument list of rule fast (workflow/rules/round.smk) for `arm`, seed 0; with `previous`,
    the previous round's GEPA folder as the rule passes it when that round ran GEPA."""
    run = exp / "default" / arm / "seed0"
    out, gepa_dir = run / f"round{round_index}", run / "gepa_state" / f"round{round_index}"
    extra = ["--previous-gepa-dir", str(run / "gepa_state" / f"round{round_index - 1}")] if previous else []
    return [
        "fast", "--arm", arm, "--round", str(round_index), "--seed", "0",
        "--population-in", str(population_in), "--policy", str(model_dir), "--base-model", str(model_dir),
        "--data", str(data), "--settings", settings, "--gepa-dir", str(gepa_dir), *extra,
        "--out", str(out / "population.json"), "--gepa-rollouts", str(out / "gepa_rollouts.parquet"),
        "--report", str(out / "fast_report.json"), "--provenance", str(out / "provenance" / "fast.json"),
    ]  # fmt: skip


def _arg(argv: list[str], name: str) -> Path:
    return Path(argv[argv.index(name) + 1])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_reflection_endpoint_down_keeps_the_state_and_a_rerun_resumes(
    tiny_model_dir, data_file, tmp_path, monkeypatch, caplog
):
    from gepa.core.state import GEPAState

    from fst.cli import main

    caplog.set_level(logging.INFO)
    monkeypatch.setenv(KEY_ENV, KEY)
    exp = tmp_path / "results" / "default"
    seed_file = exp / "default" / "population_seed.json"
    save_population(seed_population(MEMBERS[0].text), seed_file, 0)
    gone = Endpoint()
    gone.close()
    settings = _settings(_openai_reflection(gone.base_url))

    # An earlier round (no GEPA round that time): its files must survive the failure untouched.
    no_gepa = _settings(_openai_reflection(gone.base_url), gepa_round=False)
    r0 = _fast_argv(exp, 0, seed_file, tiny_model_dir, data_file, no_gepa)
    main(r0)
    population0 = Path(r0[r0.index("--out") + 1])
    before = _snapshot(exp)
    assert population0.is_file() and len(before) == 5  # the seed population and round 0's 4 outputs

    argv = _fast_argv(exp, 1, population0, tiny_model_dir, data_file, settings)
    gepa_dir = Path(argv[argv.index("--gepa-dir") + 1])
    with pytest.raises(ReflectionError) as err:
        main(argv)
    message = str(err.value)
    assert gone.base_url in message, message
    assert "state is kept" in message and str(gepa_dir) in message and "resumes" in message
    assert KEY not in message
    after = {k: v for k, v in _snapshot(exp).items() if not k.startswith(str(gepa_dir.relative_to(exp)))}
    assert after == before  # round 0 untouched, and no round-1 output written
    assert (gepa_dir / "gepa_state.bin").is_file() and (gepa_dir / "fst_budget.json").is_file()
    spent_first = GEPAState.load(str(gepa_dir)).total_num_evals
    assert spent_first >= PARETO  # the re-scoring of Φ_1 is in the kept state

    # The server is back where it was: the same command completes the round, resuming the state.
    server = Endpoint(reply=_proposal, port=gone.port)
    try:
        caplog.clear()
        main(argv)
    finally:
        server.close()
    assert "resuming this round's GEPA state" in caplog.text
    assert len(server.requests) >= 1
    round1 = population0.parent.parent / "round1"
    rollouts = pd.read_parquet(round1 / "gepa_rollouts.parquet")
    assert (rollouts["backend"] == "transformers").all()  # the resolved rollout.backend of the settings
    _, pareto = _sets(data_file, 1)
    # The file holds every call of the round, the first attempt's too: Φ_1 re-scored once, not again.
    rescored = _rescoring(rollouts.to_dict("records"), load_population(population0), pareto)
    assert [r["call_index"] for r in rescored] == list(range(PARETO))
    report = json.loads((round1 / "fast_report.json").read_text())["stats"]
    assert report["metric_calls"] == len(rollouts) > spent_first
    assert rollouts["call_index"].tolist() == list(range(len(rollouts)))
    assert report["rescoring_calls"] == PARETO and report["max_metric_calls"] == PARETO + 6
    assert 1 <= len(load_population(round1 / "population.json")) <= 2
    assert {k: v for k, v in _snapshot(exp).items() if k in before} == before


def test_the_api_key_is_in_no_artifact(tiny_model_dir, data_file, tmp_path, monkeypatch, caplog, capsys):
    from fst.cli import main

    caplog.set_level(logging.DEBUG)  # the openai/httpx debug logs too
    monkeypatch.setenv(KEY_ENV, KEY)
    exp = tmp_path / "results" / "default"
    seed_file = exp / "default" / "population_seed.json"
    save_population(seed_population(MEMBERS[0].text), seed_file, 0)
    server = Endpoint(reply=_proposal)
    try:
        settings = _settings(_openai_reflection(server.base_url))
        argv = _fast_argv(exp, 0, seed_file, tiny_model_dir, data_file, settings)
        main(argv)
    finally:
        server.close()
    assert server.requests and all(
        r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests
    )  # the key was really in play
    gepa_dir = Path(argv[argv.index("--gepa-dir") + 1])
    assert gepa_dir.is_relative_to(exp)
    files = [p for p in exp.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {
        "population.json", "gepa_rollouts.parquet", "fast_report.json", "fast.json", "gepa_state.bin",
    }  # fmt: skip
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path
    captured = capsys.readouterr()
    for text in (caplog.text, captured.out, captured.err):
        assert KEY not in text
    provenance = json.loads(Path(argv[argv.index("--provenance") + 1]).read_text())
    described = provenance["reflection"]
    assert described["backend"] == "openai" and described["base_url"] == server.base_url
    assert described["model"] == "reflector-7b" and described["api_key_env"] == KEY_ENV
    assert described["api_key_set"] is True
    assert provenance["config"]["reflection"]["api_key_env"] == KEY_ENV
    assert provenance["counts"]["reflection_calls"] == len(server.requests)


# --------------------------------------------------------------------------------------------------
# 6-9. Arm gepa across rounds: a killed and resumed round keeps every metric call, an unchanged-weights
# round continues the search without re-scoring, changed weights start afresh, each call charged once.

_KILLED_ATTEMPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
import fst.fast as fast
from fst.cli import main

real, made = fast.PolicyAdapter.evaluate, []

def evaluate(self, batch, candidate, capture_traces=False):
    out = real(self, batch, candidate, capture_traces)
    if batch:
        made.append(len(batch))
        if len(made) == 3:  # Φ_0 re-scored, then one GEPA iteration's parent and child minibatches
            print(json.dumps({"calls": sum(made)}), flush=True)
            os._exit(9)  # killed: no cleanup, no state saved after the last iteration's start
    return out

fast.PolicyAdapter.evaluate = evaluate
main(json.loads(sys.argv[1]))
"""


def _rows(argv) -> list[dict]:
    return pd.read_parquet(_arg(argv, "--gepa-rollouts")).to_dict("records")


def _stats(argv) -> dict:
    return json.loads(_arg(argv, "--report").read_text())["stats"]


@pytest.fixture(scope="module")
def reflection_server():
    server = Endpoint(reply=_proposal)
    yield server
    server.close()


@pytest.fixture(scope="module")
def killed_round0(tiny_model_dir, data_file, reflection_server, tmp_path_factory):
    """Arm gepa's round 0, killed after some metric calls, then rerun by the same command."""
    exp = tmp_path_factory.mktemp("gepa_arm") / "results" / "default"
    seed_file = exp / "default" / "population_seed.json"
    save_population(seed_population(MEMBERS[0].text), seed_file, 0)
    reflection = {**_openai_reflection(reflection_server.base_url), "api_key_env": None}
    settings = _settings(reflection)
    argv = _fast_argv(exp, 0, seed_file, tiny_model_dir, data_file, settings, arm="gepa")
    done = _run_script(_KILLED_ATTEMPT, argv)
    assert done.returncode == 9, done.stderr[-3000:]
    killed_calls = json.loads(done.stdout.strip().splitlines()[-1])["calls"]
    assert not _arg(argv, "--gepa-rollouts").exists()  # the stage died before writing its outputs
    from fst.cli import main

    main(argv)
    return {"exp": exp, "settings": settings, "argv": argv, "killed_calls": killed_calls}


@pytest.fixture(scope="module")
def gepa_round1(killed_round0, tiny_model_dir, data_file):
    """Arm gepa's round 1: the same (base) weights, the previous round's GEPA folder passed on."""
    from fst.cli import main

    r0 = killed_round0["argv"]
    argv = _fast_argv(
        killed_round0["exp"], 1, _arg(r0, "--out"), tiny_model_dir, data_file, killed_round0["settings"],
        arm="gepa", previous=True,
    )  # fmt: skip
    main(argv)
    return argv


def test_a_killed_and_resumed_round_keeps_every_metric_call_with_continuing_seeds(killed_round0, data_file):
    from gepa.core.state import GEPAState

    argv, killed = killed_round0["argv"], killed_round0["killed_calls"]
    rows, stats = _rows(argv), _stats(argv)
    gepa_dir = _arg(argv, "--gepa-dir")
    _, pareto = _sets(data_file, 0)
    # The killed attempt's calls are in the file: its re-scoring of Φ_0 first (the resume re-scores nothing).
    assert [(r["system_text"], r["problem_id"]) for r in rows[:PARETO]] == [
        (MEMBERS[0].text, p.id) for p in pareto
    ]
    assert len(_rescoring(rows, MEMBERS[:1], pareto)) == PARETO
    # Every call is in the file, the killed attempt's first: one row per call, indexed in order.
    assert [r["call_index"] for r in rows] == list(range(len(rows)))
    assert len(rows) > killed and stats["metric_calls"] == len(rows)
    assert [r["round"] for r in rows] == [0] * len(rows)
    # The killed attempt's last iteration was lost from GEPA's saved state (saved at its start, after
    # Φ_0's PARETO re-scoring calls): GEPA repeated it. Those calls were made all the same.
    lost = killed - PARETO
    assert [r["counted_by_gepa"] for r in rows[:killed]] == [True] * PARETO + [False] * lost
    assert all(r["counted_by_gepa"] for r in rows[killed:])
    assert stats["uncounted_calls"] == lost > 0
    assert stats["gepa_metric_calls"] == len(rows) - lost == GEPAState.load(str(gepa_dir)).total_num_evals
    assert stats["rescoring_calls"] == PARETO and stats["calls_before"] == 0
    # Seeds: one per batch of calls, the search's base plus the index of the batch's first call, so
    # they keep counting across the kill instead of replaying the lost calls' seeds.
    base = rows[0]["sampling_seed"]
    batches: dict[int, list[int]] = {}
    for r in rows:
        batches.setdefault(r["sampling_seed"], []).append(r["call_index"])
    for seed, indices in batches.items():
        assert indices == list(range(indices[0], indices[0] + len(indices)))
        assert seed == base + indices[0]
    assert base + killed in batches  # the first batch after the resume
    assert len(batches) == len(set(batches))
    # The call log in the GEPA folder is the same record.
    logged = [json.loads(line) for line in (gepa_dir / "metric_calls.jsonl").read_text().splitlines()]
    assert [(r["call_index"], r["completion_ids"], r["counted_by_gepa"]) for r in logged] == [
        (r["call_index"], list(r["completion_ids"]), r["counted_by_gepa"]) for r in rows
    ]
    provenance = json.loads(_arg(argv, "--provenance").read_text())
    assert provenance["counts"]["metric_calls"] == len(rows)
    assert provenance["counts"]["metric_calls_not_counted_by_gepa"] == lost


def test_a_gepa_arm_round_under_unchanged_weights_continues_the_search_without_rescoring(
    killed_round0, gepa_round1, data_file
):
    from gepa.core.state import GEPAState

    r0, r1 = killed_round0["argv"], gepa_round1
    stats1 = _stats(r1)
    gepa0, gepa1 = _arg(r0, "--gepa-dir"), _arg(r1, "--gepa-dir")
    state0, state1 = GEPAState.load(str(gepa0)), GEPAState.load(str(gepa1))
    assert stats1["continued_from"] == str(gepa0)
    assert stats1["calls_before"] == state0.total_num_evals > 0
    assert stats1["rescoring_calls"] == 0
    rows1 = _rows(r1)
    population0 = load_population(_arg(r0, "--out"))
    _, pareto = _sets(data_file, 1)
    assert _rescoring(rows1, population0, pareto) == []  # no member of Φ_1 scored again on the Pareto set
    assert rows1 and stats1["metric_calls"] == len(rows1) == stats1["gepa_metric_calls"]
    assert state1.total_num_evals == stats1["calls_before"] + stats1["gepa_metric_calls"]
    assert stats1["max_metric_calls"] == stats1["calls_before"] + 6  # a fresh proposal budget
    # The search went on from round 0's: its candidates and scores; call indices go on from round 0's.
    n0 = len(state0.program_candidates)
    assert state1.program_candidates[:n0] == state0.program_candidates
    assert state1.prog_candidate_val_subscores[:n0] == state0.prog_candidate_val_subscores
    assert stats1["candidates_before"] == n0
    assert stats1["gepa_iterations"] == state1.i - state0.i > 0  # this round's iterations, not the search's
    assert [r["call_index"] for r in rows1] == list(range(len(_rows(r0)), len(_rows(r0)) + len(rows1)))
    logged = (gepa1 / "metric_calls.jsonl").read_text().splitlines()
    assert len(logged) == len(rows1)  # each round's folder logs the calls of that round
    # Carried members keep their ids; the whole candidate set is written, not only the top K.
    candidates = json.loads((gepa1 / "fst_candidates.json").read_text())["candidates"]
    assert len(candidates) == len(state1.program_candidates)
    ids = {c["text"]: c["id"] for c in candidates}
    assert all(ids[m.text] == m.id for m in population0)
    population1 = load_population(_arg(r1, "--out"))
    assert {c["id"] for c in candidates if c["in_population"]} == {m.id for m in population1}
    provenance = json.loads(_arg(r1, "--provenance").read_text())
    assert provenance["counts"]["rescoring_calls"] == 0
    assert provenance["gepa"]["continued_from"] == str(gepa0)


def test_changed_weights_start_a_fresh_search_and_its_rescoring_is_counted(
    killed_round0, tiny_model_dir, tiny, data_file, tmp_path
):
    from fst.cli import main

    model_dir = tmp_path / "perturbed"
    _perturbed(tiny_model_dir).save_pretrained(model_dir)
    tiny[1].save_pretrained(model_dir)
    r0 = killed_round0["argv"]
    population0 = load_population(_arg(r0, "--out"))
    # Round 1 of a run whose weights changed, handed the same previous GEPA folder.
    exp = killed_round0["exp"]
    argv = _fast_argv(exp, 1, _arg(r0, "--out"), model_dir, data_file, killed_round0["settings"], arm="gepa")
    argv = [*argv, "--previous-gepa-dir", str(_arg(r0, "--gepa-dir"))]
    argv[argv.index("--gepa-dir") + 1] = str(tmp_path / "gepa_state" / "round1")
    for name in ("--out", "--gepa-rollouts", "--report", "--provenance"):
        argv[argv.index(name) + 1] = str(tmp_path / "round1" / _arg(argv, name).name)
    main(argv)
    stats, rows = _stats(argv), _rows(argv)
    _, pareto = _sets(data_file, 1)
    rescoring = len(population0) * PARETO
    assert stats["continued_from"] is None and stats["calls_before"] == 0
    assert stats["rescoring_calls"] == rescoring
    assert [(r["system_text"], r["problem_id"]) for r in rows[:rescoring]] == [
        (m.text, p.id) for m in population0 for p in pareto
    ]  # Φ_1 re-scored under the new weights first, and charged
    assert stats["metric_calls"] == len(rows) > rescoring
    assert [r["call_index"] for r in rows] == list(range(len(rows)))
    assert json.loads(_arg(argv, "--provenance").read_text())["counts"]["rescoring_calls"] == rescoring


def test_policy_rollouts_charged_to_arm_gepa_equal_its_distinct_metric_calls(killed_round0, request):
    from fst.report.summary import counts_by_run, spent_before

    r0 = killed_round0["argv"]
    rows0 = _rows(r0)
    (round0,) = counts_by_run([_arg(r0, "--provenance")]).values()
    assert spent_before(round0, 1).policy_rollouts == len(rows0)  # the killed attempt's calls too
    r1 = request.getfixturevalue("gepa_round1")
    (per_round,) = counts_by_run([_arg(r0, "--provenance"), _arg(r1, "--provenance")]).values()
    rows1 = _rows(r1)
    distinct = {r["call_index"] for r in rows0} | {r["call_index"] for r in rows1}
    assert len(distinct) == len(rows0) + len(rows1)  # no call in both rounds' files
    logged = [
        json.loads(line)["call_index"]
        for argv in (r0, r1)
        for line in (_arg(argv, "--gepa-dir") / "metric_calls.jsonl").read_text().splitlines()
    ]
    assert sorted(logged) == list(range(len(logged)))
    assert spent_before(per_round, 1).policy_rollouts == len(rows0)
    assert spent_before(per_round, 2).policy_rollouts == len(distinct) == len(logged)


# --------------------------------------------------------------------------------------------------
# 10. The feedback-blind control (fast.proposer blind) against GEPA's own reflective proposal


def _blind_control_reply(n: int) -> str:
    """The first reply is junk (rejected and counted, GEPA asks again), every later one a proposal."""
    return "ok." if n == 1 else _proposal(n)


@pytest.mark.parametrize("proposer", ["blind", "reflective"])
def test_a_blind_proposal_is_written_without_the_rollouts_or_their_feedback(
    proposer, tiny_model_dir, data_file, tmp_path
):
    from fst.cli import main
    from fst.reflection import blind_request
    from fst.tasks import describe_task, get_task

    exp = tmp_path / "results" / "default"
    seed_file = exp / "default" / "population_seed.json"
    save_population(seed_population(MEMBERS[0].text), seed_file, 0)
    server = Endpoint(reply=_blind_control_reply)
    try:
        reflection = {**_openai_reflection(server.base_url), "api_key_env": None}
        settings = _settings(reflection, proposer=proposer)
        argv = _fast_argv(exp, 0, seed_file, tiny_model_dir, data_file, settings)
        main(argv)
    finally:
        server.close()
    requests = ["\n".join(m["content"] for m in r["body"]["messages"]) for r in server.requests]
    rows, stats = _rows(argv), _stats(argv)
    questions = {p.id: p.question for p in load_split(data_file, "train")}
    anchors, _ = _sets(data_file, 0)
    description = describe_task(anchors)
    assert description == get_task("arithmetic").description
    proposals = {r["system_text"] for r in rows} - {MEMBERS[0].text}
    assert len(requests) >= 2 and proposals  # proposals were written, then scored by GEPA's loop
    assert {t.split(":")[0] for t in proposals} <= {f"Proposal {n}" for n in range(2, len(requests) + 1)}

    rollout_texts = {
        "question": {questions[r["problem_id"]] for r in rows},
        "feedback": {r["feedback"].strip() for r in rows},
        # a reply of a few characters (e.g. a lone number) may occur anywhere by chance
        "reply": {r["completion_text"].strip() for r in rows if len(r["completion_text"].strip()) >= 12},
    }
    assert rollout_texts["reply"] and rollout_texts["feedback"]
    sent = "\n\n".join(requests)
    leaked = {kind: [t for t in texts if t in sent] for kind, texts in rollout_texts.items()}
    if proposer == "blind":
        assert leaked == {"question": [], "feedback": [], "reply": []}
        for request in requests:
            assert description in request
            assert not any(word in request for word in ("Feedback", "Generated Outputs", "Expected"))
            # the whole request is the current prompt and the task description in the blind template
            assert request in {blind_request(text, description) for text in {MEMBERS[0].text} | proposals}
        assert stats["task_description"] == description
    else:  # GEPA's own request: the parent's minibatch rollouts with their feedback
        assert leaked["question"] and leaked["feedback"]
        assert all("Feedback" in request and description not in request for request in requests)
        assert stats["task_description"] is None
    # the same reflection LM, guard and accounting in both
    assert stats["proposer"] == proposer and stats["proposals_rejected_unparseable"] == 1
    provenance = json.loads(_arg(argv, "--provenance").read_text())
    assert provenance["gepa"]["proposer"] == provenance["config"]["fast"]["proposer"] == proposer
    counts = provenance["counts"]
    assert counts["reflection_calls"] == len(requests) and counts["proposals_rejected_unparseable"] == 1
    assert counts["reflection_prompt_tokens"] == 11 * len(requests)  # the endpoint's usage, as reported
    assert counts["metric_calls"] == len(rows) >= PARETO + 6


def test_a_round_set_up_with_another_proposer_is_not_resumed(tiny, data_file, tmp_path, caplog):
    """The proposer is part of the round's key: a blind round never resumes a reflective round's state."""
    caplog.set_level(logging.INFO, logger="fst")
    model, tokenizer = tiny
    anchors, pareto = _sets(data_file, 0)
    run_dir = tmp_path / "gepa"
    reflective = FastSettings(2, 2, MINIBATCH, 5, "reflective")
    for settings in (reflective, replace(reflective, proposer="blind")):
        adapter = PolicyAdapter(model, tokenizer, SamplingSettings(**SAMPLING), 5)
        _, stats = run_fast_round(
            adapter, GuardedReflection(_proposal), MEMBERS[:1], anchors, pareto, run_dir, 0, settings
        )
        assert stats["proposer"] == settings.proposer
        assert stats["rescoring_calls"] == PARETO  # each set-up starts afresh: the seed re-scored
    assert "made for another set-up of this round" in caplog.text
    with pytest.raises(ValueError, match="fast.proposer"):
        run_fast_round(adapter, GuardedReflection(_proposal), MEMBERS[:1], anchors, pareto, run_dir, 0,
                       replace(reflective, proposer="random"))
