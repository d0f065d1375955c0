"""Fast stage: one light GEPA round on the population of system prompts, under the current policy θ_c.

GEPA (the `gepa` package) does the evolution: reflective proposals from traces and feedback, minibatch
acceptance, the per-instance Pareto front. What FST needs and GEPA does not provide is written here:

- a GEPA adapter whose metric calls are rollouts of the policy being trained, scored by the same reward
  and feedback code as the score stage, each one kept for audit (they are policy rollouts too);
- carrying the search across rounds that each run in a fresh process. When the round's policy weights
  are byte-identical to those of the previous GEPA round (arm gepa, whose weights never change) and the
  reflection, sampling and GEPA settings and the Pareto set are the same, the previous round's scores
  are still valid: the round copies that round's GEPA state into its own folder and lets GEPA resume it
  (GEPA's own resume from `run_dir`), with a fresh budget, spending no metric call on re-scoring.
  Otherwise (new weights, as in arm fst) old scores were earned under other weights: the round
  re-scores the K members of Φ_c on the Pareto set under θ_c and writes them as a new GEPA state
  (member 0 as GEPA's seed, the others as candidates); those re-scoring calls are metric calls and
  are counted. Within a round, a killed and retried stage resumes GEPA's state (its run folder lives
  outside the round's outputs), but only if the round is set up as before (a key over settings,
  population, problem sets, weights and the state it continues): a rerun after a config change starts
  afresh instead of resuming a finished, stale search;
- the audit of every metric call across kills: `metric_calls.jsonl` in the GEPA folder (see
  `CallLog`), and the whole candidate set with its Pareto front (`fst_candidates.json`);
- the new population: the top-K of GEPA's Pareto front, with lineage mapped to member ids;
- rejecting (and counting) reflection replies that hold no usable prompt;
- a feedback-blind control (`fast.proposer: blind`): the same loop, reflection LM, budget and accounting,
  but each proposal is written from the current prompt and the task's description only (`BlindProposal`),
  never from the rollouts GEPA just made or their feedback.

This builds GEPA states with `GEPAState` and `update_state_with_new_program`, which are GEPA internals:
gepa is pinned (0.1.4) and the tests cover the round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import pandas as pd

from fst import artifacts
from fst.generation import SamplingSettings, chat_prompt_ids, sample
from fst.population import Member
from fst.reflection import blind_request, extract_prompt
from fst.tasks import Problem, describe_task, score_reply

log = logging.getLogger(__name__)

COMPONENT = "system_prompt"
_BUDGET_FILE = "fst_budget.json"


CALLS_FILE = "metric_calls.jsonl"
CANDIDATES_FILE = "fst_candidates.json"


def read_calls(path: Path) -> list[dict]:
    """The metric-call records of a GEPA folder's call log (none if it has none yet)."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


class CallLog:
    """Every metric call of a GEPA search, one JSON line each, appended and synced as the call is made.

    Hand-written because GEPA persists its state (adapter state included) only between iterations: the
    calls of an iteration cut short by a kill are spent policy rollouts that GEPA's saved state does
    not know about and that GEPA repeats on resume. They stay here, marked `counted_by_gepa: false`.
    A call's sampling seed comes from its index in the search, so the repeated calls get new seeds
    rather than replaying the lost ones, and a continued search's seeds carry on from the last round.

    Each round's folder logs the calls made in that round only (a long search would otherwise copy
    its whole history into every round): `offset` is the number of calls the search made in earlier
    rounds (the first index here), `counted_before` how many of them GEPA's state counts.
    """

    def __init__(self, path: Path, offset: int = 0, counted_before: int = 0):
        self.path, self.offset, self.counted_before = path, offset, counted_before
        self.records = read_calls(path)

    def __len__(self) -> int:
        """Calls of the search so far, earlier rounds' included: the index of the next call."""
        return self.offset + len(self.records)

    def append(self, records: list[dict]) -> None:
        with open(self.path, "a") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.extend(records)

    def reconcile(self, gepa_total: int) -> int:
        """Mark the calls beyond what GEPA's state counts (the tail, lost by a kill) as not counted."""
        counted = [r for r in self.records if r["counted_by_gepa"]]
        excess = self.counted_before + len(counted) - gepa_total
        if excess > 0:
            log.warning("%d metric calls made before a kill are not in GEPA's saved state: kept in the "
                        "audit as not counted by GEPA (GEPA repeats them)", excess)
            for record in counted[-excess:]:
                record["counted_by_gepa"] = False
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            os.replace(tmp, self.path)
        elif excess < 0:
            log.warning("GEPA counts %d metric calls the call log does not hold", -excess)
        return excess


class PolicyAdapter:
    """GEPA adapter: a candidate prompt is scored by rollouts of the current policy, one per problem."""

    # None: GEPA's own reflective proposal (template + extractor) with our LM. `run_fast_round` sets a
    # `BlindProposal` here for fast.proposer blind.
    propose_new_texts = None

    def __init__(self, model, tokenizer, settings: SamplingSettings, seed: int, engine=None):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        # engine(tokenizer, prompts, settings, seed): transformers' sampling on `model` unless given
        self.engine = engine or partial(sample, model)
        self.seed = seed  # sampling seed base of a search started from scratch
        self.seed_base = seed  # that of the search being run (a continued one keeps its own)
        self.round_index = 0
        self.calls: CallLog | None = None  # the search's persistent call log, when attached
        self.records: list[dict] = []  # the metric calls of this process
        self.seconds = 0.0  # time spent generating and scoring (the policy-rollout share of a round)

    def attach(self, calls: CallLog, seed_base: int, round_index: int) -> None:
        """Write every call to `calls`, seeding call n of the search with seed_base + n."""
        self.calls, self.seed_base, self.round_index = calls, seed_base, round_index

    def evaluate(self, batch: list[Problem], candidate: dict[str, str], capture_traces: bool = False):
        from gepa import EvaluationBatch

        started = time.perf_counter()
        system = candidate[COMPONENT]
        prompts = [chat_prompt_ids(self.tokenizer, system, p.question) for p in batch]
        first = len(self.calls) if self.calls is not None else len(self.records)
        seed = self.seed_base + first
        done = self.engine(self.tokenizer, prompts, self.settings, seed)
        scores = [score_reply(p, c.text) for p, c in zip(batch, done, strict=True)]
        traces = [
            {"question": p.question, "reply": c.text, "feedback": s.feedback, "reward": s.reward}
            for p, c, s in zip(batch, done, scores, strict=True)
        ]
        new = [
            {
                "call_index": first + n,
                "round": self.round_index,
                "problem_id": problem.id,
                "system_text": system,
                "prompt_ids": prompt,
                "completion_ids": completion.ids,
                "logprobs": completion.logprobs,
                "finish_reason": completion.finish_reason,
                "completion_text": completion.text,
                "reward": trace["reward"],
                "feedback": trace["feedback"],
                "sampling_seed": seed,  # one seed per batch of calls (generation is seeded per batch)
                "counted_by_gepa": True,
            }
            for n, (problem, prompt, completion, trace) in enumerate(
                zip(batch, prompts, done, traces, strict=True)
            )
        ]
        if self.calls is not None:
            self.calls.append(new)
        self.records.extend(new)
        self.seconds += time.perf_counter() - started
        return EvaluationBatch(
            outputs=[c.text for c in done],
            scores=[s.reward for s in scores],
            trajectories=traces if capture_traces else None,
        )

    def make_reflective_dataset(self, candidate, eval_batch, components_to_update):
        """GEPA's reflective records: what the model was asked, what it replied, what was wrong."""
        records = [
            {"Inputs": t["question"], "Generated Outputs": t["reply"], "Feedback": t["feedback"]}
            for t in eval_batch.trajectories
        ]
        return {name: records for name in components_to_update}


class ProposalRejected(RuntimeError):
    """A reflection reply with no usable prompt; GEPA logs it and skips the proposal."""


@dataclass
class GuardedReflection:
    """The reflection LM as GEPA calls it, with replies that hold no prompt rejected and counted.

    GEPA catches a failing reflection call and carries on spending metric calls; after
    `max_failures` backend failures in a row this asks GEPA to stop (see `should_stop`).
    """

    lm: object
    max_failures: int = 2
    rejected: int = 0
    failures_in_a_row: int = 0
    replies: list[dict] = field(default_factory=list)

    @property
    def unavailable(self) -> bool:
        return self.failures_in_a_row >= self.max_failures

    def should_stop(self, gepa_state) -> bool:
        """GEPA stop condition (StopperProtocol)."""
        return self.unavailable

    @property
    def total_cost(self) -> float:  # GEPA wraps LMs without it in a tracker that guesses tokens
        return 0.0

    def __call__(self, prompt) -> str:
        from fst.reflection import ReflectionError

        try:
            reply = self.lm(prompt)
        except ReflectionError:
            self.failures_in_a_row += 1
            raise
        self.failures_in_a_row = 0
        text = extract_prompt(reply)
        self.replies.append({"reply": reply, "accepted_as_prompt": text is not None})
        if text is None:
            self.rejected += 1
            raise ProposalRejected(f"reflection reply holds no prompt: {reply[:80]!r}")
        return reply


PROPOSERS = ("reflective", "blind")


@dataclass
class BlindProposal:
    """GEPA's `adapter.propose_new_texts` for the feedback-blind control (fast.proposer blind).

    GEPA calls it where it would render its reflection request from the reflective dataset (the parent's
    minibatch rollouts and their feedback); this ignores that dataset and asks the same reflection LM,
    through the same `GuardedReflection` (junk replies rejected and counted, usage counted by the LM),
    with the current prompt and the task's description only. The new text is taken from the reply as
    GEPA takes a reflective one (its fenced-block extractor).
    """

    reflection: GuardedReflection
    task_description: str

    def __call__(self, candidate, reflective_dataset, components_to_update) -> dict[str, str]:
        from gepa.strategies.instruction_proposal import InstructionProposalSignature

        texts = {}
        for name in components_to_update:
            reply = self.reflection(blind_request(candidate[name], self.task_description))
            texts[name] = InstructionProposalSignature.output_extractor(reply.strip())["new_instruction"]
        return texts


def _valset_evaluation(adapter: PolicyAdapter, problems: list[Problem], text: str):
    from gepa.core.state import ValsetEvaluation

    batch = adapter.evaluate(problems, {COMPONENT: text})
    ids = range(len(problems))
    return ValsetEvaluation(
        dict(zip(ids, batch.outputs, strict=True)), dict(zip(ids, batch.scores, strict=True))
    )


def start_state(adapter: PolicyAdapter, members: list[Member], pareto: list[Problem], run_dir: Path):
    """A GEPA state holding the K members of Φ_c, each scored on the Pareto set under θ_c."""
    from gepa.core.state import GEPAState

    state = GEPAState({COMPONENT: members[0].text}, _valset_evaluation(adapter, pareto, members[0].text))
    for member in members[1:]:
        evaluation = _valset_evaluation(adapter, pareto, member.text)
        state.update_state_with_new_program([], {COMPONENT: member.text}, evaluation, None, 0)
    state.num_full_ds_evals = len(members)
    state.total_num_evals = len(members) * len(pareto)
    state.save(str(run_dir))
    return state


def _skip_seed_policy():
    """GEPA's full-evaluation policy, minus its re-scoring of the seed: the state already holds it."""
    from gepa.strategies.eval_policy import FullEvaluationPolicy

    class StartFromState(FullEvaluationPolicy):
        def get_seed_eval_batch(self, loader):
            return []

    return StartFromState()


def lineage(parents: list[list[int | None]], previous: list[Member], round_index: int):
    """(member id, parent id, round created) of every candidate index.

    Index i < len(previous) is previous[i] (the state was started, or continued, from those candidates
    in that order); a later index is a candidate proposed in this round, `r<round>-c<index>`.
    """
    out: list[tuple[str, str | None, int]] = []
    for i, parent_list in enumerate(parents):
        if i < len(previous):
            out.append((previous[i].id, previous[i].parent_id, previous[i].round_created))
            continue
        parent = next((p for p in parent_list if p is not None), None)
        out.append((f"r{round_index}-c{i}", out[parent][0] if parent is not None else None, round_index))
    return out


def select_population(
    candidates: list[str],
    parents: list[list[int | None]],
    scores: list[float],
    front: dict[int, set[int]],
    previous: list[Member],
    k: int,
    round_index: int,
) -> list[Member]:
    """Top-k of the Pareto front by mean Pareto-set score; lineage mapped to member ids (see `lineage`).

    Members share the group equally (weight 1/k); ties keep GEPA's order.
    """
    on_front = sorted({i for ids in front.values() for i in ids}, key=lambda i: (-scores[i], i))[:k]
    names = lineage(parents, previous, round_index)
    return [
        Member(
            id=names[i][0],
            text=candidates[i],
            parent_id=names[i][1],
            weight=1.0 / len(on_front),
            val_score=scores[i],
            round_created=names[i][2],
        )
        for i in on_front
    ]


def candidates_record(result, previous: list[Member], population: list[Member], round_index: int) -> dict:
    """Every candidate of the search with its lineage, Pareto-set score and place on the front."""
    front = result.per_val_instance_best_candidates
    names = lineage(result.parents, previous, round_index)
    chosen = {m.id for m in population}
    return {
        "round": round_index,
        "candidates": [
            {
                "index": i,
                "id": name,
                "text": candidate[COMPONENT],
                "parent_id": parent_id,
                "parents": result.parents[i],
                "round_created": created,
                "val_score": result.val_aggregate_scores[i],
                "best_on_problems": sorted(str(p) for p, ids in front.items() if i in ids),
                "on_front": any(i in ids for ids in front.values()),
                "in_population": name in chosen,
            }
            for i, (candidate, (name, parent_id, created)) in enumerate(
                zip(result.candidates, names, strict=True)
            )
        ],
    }


@dataclass(frozen=True)
class FastSettings:
    budget: int  # GEPA metric calls for proposals this round (re-scoring Φ_c comes on top)
    population_size: int  # K
    reflection_minibatch_size: int
    seed: int
    proposer: str  # "reflective" (GEPA's proposal from rollouts and feedback) or "blind" (BlindProposal)


def _digest(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def chain_key(identity: str, settings: FastSettings, pareto) -> str:
    """What keeps a GEPA state's scores valid in a later round: the caller's identity (weights,
    reflection, sampling), GEPA's minibatch size and the Pareto set the scores were earned on; and the
    proposer, so that a blind search never continues one whose candidates were written from feedback."""
    return _digest(
        {
            "identity": identity,
            "reflection_minibatch_size": settings.reflection_minibatch_size,
            "proposer": settings.proposer,
            "pareto": [p.id for p in pareto],
        }
    )


def round_key(
    identity: str, settings: FastSettings, members, anchors, pareto, continues: str | None = None
) -> str:
    """What a resumable GEPA state must match: the caller's identity (weights, reflection, sampling),
    the round's settings (the proposer included), the population it starts from, its problem sets and
    the state it continues."""
    return _digest(
        {
            "identity": identity,
            "settings": asdict(settings),
            "members": [asdict(m) for m in members],
            "anchors": [p.id for p in anchors],
            "pareto": [p.id for p in pareto],
            "continues": continues,
        }
    )


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _continuable(previous_dir: Path | None, chain: str, members: list[Member]) -> dict | None:
    """The previous round's round record, if this round may continue its search, else None."""
    if previous_dir is None:
        return None
    meta = _read_json(previous_dir / _BUDGET_FILE)
    files = [previous_dir / name for name in ("gepa_state.bin", CALLS_FILE, CANDIDATES_FILE)]
    if not meta or not all(f.is_file() for f in files):
        log.info("previous GEPA folder %s is not a finished round: starting a fresh search", previous_dir)
        return None
    if meta.get("chain_key") != chain:
        log.info("weights, reflection, sampling or Pareto set differ from %s: starting a fresh search "
                 "(the population is re-scored under the current weights)", previous_dir)
        return None
    texts = {c["text"] for c in _read_json(previous_dir / CANDIDATES_FILE)["candidates"]}
    if any(m.text not in texts for m in members):
        log.info("the population is not drawn from %s: starting a fresh search", previous_dir)
        return None
    return meta


def _start_round(adapter, members, pareto, run_dir, round_index, settings, keys, previous_dir, previous):
    """A new GEPA folder for the round: the previous round's search continued, or Φ_c re-scored."""
    from gepa.core.state import GEPAState

    # Calls an earlier attempt of this round made (killed before GEPA saved a state, or under another
    # set-up) were spent all the same: they stay in the audit, not counted by GEPA.
    earlier = read_calls(run_dir / CALLS_FILE)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if previous is not None:
        # GEPA's own resume: its saved state in this round's run_dir. The previous folder stays as it was.
        shutil.copy2(previous_dir / "gepa_state.bin", run_dir / "gepa_state.bin")
        state = GEPAState.load(str(run_dir))
        offset = previous["log_offset"] + len(read_calls(previous_dir / CALLS_FILE))
        calls = CallLog(run_dir / CALLS_FILE, offset, state.total_num_evals)
        known = [Member(c["id"], c["text"], c["parent_id"], 0.0, c["val_score"], c["round_created"])
                 for c in _read_json(previous_dir / CANDIDATES_FILE)["candidates"]]
        seed_base, calls_before, rescoring = previous["seed_base"], state.total_num_evals, 0
        log.info("continuing the GEPA search of %s (%d metric calls made by it, unchanged weights): "
                 "no re-scoring", previous_dir, calls_before)
    else:
        calls = CallLog(run_dir / CALLS_FILE)
        known, seed_base, calls_before, offset = list(members), adapter.seed, 0, 0
    start = len(calls)
    calls.append([r | {"call_index": start + n, "counted_by_gepa": False} for n, r in enumerate(earlier)])
    if previous is None:
        adapter.attach(calls, seed_base, round_index)
        state = start_state(adapter, members, pareto, run_dir)
        rescoring = state.total_num_evals
    meta = {
        **keys,
        "round": round_index,
        "continued_from": str(previous_dir) if previous is not None else None,
        "calls_before": calls_before,
        "log_offset": offset,
        "rescoring_calls": rescoring,
        "max_metric_calls": state.total_num_evals + settings.budget,
        "iterations_before": state.i + 1,  # GEPA's iteration counter runs on over a continued search
        "seed_base": seed_base,
        "candidates_before": [asdict(m) for m in known],
    }
    artifacts.write_json(meta, run_dir / _BUDGET_FILE)
    return calls, meta


def run_fast_round(
    adapter: PolicyAdapter,
    reflection: GuardedReflection,
    members: list[Member],
    anchors: list[Problem],
    pareto: list[Problem],
    run_dir: Path,
    round_index: int,
    settings: FastSettings,
    identity: str = "",
    previous_dir: Path | None = None,
) -> tuple[list[Member], dict]:
    """Φ_c -> Φ_{c+1}. Returns the new population and the round's GEPA accounting.

    `identity` names what the caller knows defines the round beyond the arguments (e.g. the policy's
    content hash): a GEPA state in `run_dir` is resumed only if it was made for the same round, and
    the search of `previous_dir` (the previous round's GEPA folder) is continued only if it was made
    with the same identity, minibatch size and Pareto set, and Φ_c is drawn from its candidates.
    """
    import gepa
    from gepa.core.state import GEPAState
    from gepa.strategies.proposal_sampling import SingleMutationSampling
    from gepa.strategies.proposal_selection import AllImprovements

    if settings.proposer not in PROPOSERS:
        raise ValueError(f"fast.proposer must be one of {', '.join(PROPOSERS)}, not {settings.proposer!r}")
    blind = BlindProposal(reflection, describe_task(anchors)) if settings.proposer == "blind" else None
    adapter.propose_new_texts = blind  # None: GEPA's own reflective proposal
    chain = chain_key(identity, settings, pareto)
    previous = _continuable(previous_dir, chain, members)
    continues = previous["round_key"] if previous is not None else None
    key = round_key(identity, settings, members, anchors, pareto, continues)
    keys = {"round_key": key, "chain_key": chain}
    meta = _read_json(run_dir / _BUDGET_FILE)
    if (run_dir / "gepa_state.bin").exists() and meta.get("round_key") == keys["round_key"]:
        log.info("resuming this round's GEPA state in %s", run_dir)
        calls = CallLog(run_dir / CALLS_FILE, meta["log_offset"], meta["calls_before"])
        calls.reconcile(GEPAState.load(str(run_dir)).total_num_evals)
    else:
        if (run_dir / "gepa_state.bin").exists():
            log.warning("GEPA state in %s was made for another set-up of this round (settings, population, "
                        "problems or weights changed): starting the round afresh", run_dir)
        calls, meta = _start_round(
            adapter, members, pareto, run_dir, round_index, settings, keys, previous_dir, previous
        )
    adapter.attach(calls, meta["seed_base"], round_index)
    (run_dir / "gepa.stop").unlink(missing_ok=True)  # a leftover stop file would end every later run
    result = gepa.optimize(
        seed_candidate={COMPONENT: members[0].text},
        trainset=anchors,
        valset=pareto,
        adapter=adapter,
        reflection_lm=reflection,
        # Every search choice explicit (gepa is pinned, but a default is not a decision):
        # GEPA's own reflective-mutation instruction; with a blind proposer GEPA leaves the proposal to
        # adapter.propose_new_texts and renders no template
        reflection_prompt_template=None,
        candidate_selection_strategy="pareto",  # parent drawn from the per-instance Pareto front
        frontier_type="instance",
        module_selector="round_robin",  # one component (the system prompt): always that one
        batch_sampler="epoch_shuffled",  # reflection minibatches drawn from the anchors, epoch by epoch
        reflection_minibatch_size=settings.reflection_minibatch_size,
        acceptance_criterion="strict_improvement",  # a proposal must beat its parent on the minibatch
        sampling_strategy=SingleMutationSampling(),  # one parent, one mutation per iteration
        selection_strategy=AllImprovements(),  # every accepted proposal enters the candidate pool
        skip_perfect_score=True,  # a minibatch its parent already solves (reward 1) teaches nothing
        perfect_score=1.0,  # the tasks' reward is in [0, 1]
        use_merge=False,  # the method evolves by reflection only
        cache_evaluation=False,  # every metric call is a real policy rollout, charged as one
        use_wandb=False,
        use_mlflow=False,  # the workflow mirrors to MLflow itself, from the files
        max_metric_calls=meta["max_metric_calls"],
        val_evaluation_policy=_skip_seed_policy(),
        run_dir=str(run_dir),
        seed=settings.seed,
        stop_callbacks=[reflection.should_stop],
        display_progress_bar=False,
        raise_on_exception=False,
    )
    state = GEPAState.load(str(run_dir))
    calls.reconcile(state.total_num_evals)
    known = [Member(**m) for m in meta["candidates_before"]]
    texts = [c[COMPONENT] for c in result.candidates]
    population = select_population(
        texts,
        result.parents,
        result.val_aggregate_scores,
        result.per_val_instance_best_candidates,
        known,
        settings.population_size,
        round_index,
    )
    artifacts.write_json(candidates_record(result, known, population, round_index), run_dir / CANDIDATES_FILE)
    if len(population) < settings.population_size:
        log.warning("round %d: the Pareto front holds %d candidates, fewer than K = %d: the population is "
                    "the whole front, and each group is spread over %d prompts (unevenly if %d does not "
                    "divide G)", round_index, len(population), settings.population_size, len(population),
                    len(population))
    this_round = calls.records
    stats = {
        # every policy rollout GEPA's metric made in this round, over all attempts: what is charged
        "metric_calls": len(this_round),
        # of those, the ones GEPA's own state counts (its budget); the rest were lost to a kill
        "gepa_metric_calls": state.total_num_evals - meta["calls_before"],
        "uncounted_calls": sum(not r["counted_by_gepa"] for r in this_round),
        "rescoring_calls": meta["rescoring_calls"],
        "continued_from": meta["continued_from"],
        "calls_before": meta["calls_before"],  # made by the search this round continues, charged there
        "max_metric_calls": meta["max_metric_calls"],
        "candidates_before": len(known),
        "candidates_after": len(texts),
        "proposals_accepted": len(texts) - len(known),
        "population_size": len(population),  # < K when the front is smaller than K
        "proposals_rejected_unparseable": reflection.rejected,
        "gepa_iterations": state.i + 1 - meta["iterations_before"],
        "policy_rollout_seconds": round(adapter.seconds, 3),
        "proposer": settings.proposer,
        # what a blind proposal knew of the task (None: reflective proposals read the rollouts instead)
        "task_description": blind.task_description if blind is not None else None,
    }
    return population, stats


def anchor_and_pareto_sets(train: list[Problem], seed: int, round_index: int, anchors: int, pareto: int):
    """The round's anchor problems (GEPA's trainset) and the run's fixed Pareto set (its valset).

    Both come from the training split: the validation split stays unseen by either channel.
    """
    order = list(train)
    random.Random(f"pareto-{seed}").shuffle(order)
    pareto_set, rest = order[:pareto], order[pareto:]
    random.Random(f"anchors-{seed}-{round_index}").shuffle(rest)
    return rest[:anchors], pareto_set


def records_frame(run_dir: Path, seed: int, backend: str) -> pd.DataFrame:
    """The round's metric calls from the GEPA folder's call log: every attempt's, kills included."""
    frame = pd.DataFrame(read_calls(run_dir / CALLS_FILE))
    frame["seed"] = seed
    frame["backend"] = backend
    return frame
