"""Fast stage: one light GEPA round on the population of system prompts, under the current policy θ_c.

GEPA (the `gepa` package) does the evolution: reflective proposals from traces and feedback, minibatch
acceptance, the per-instance Pareto front. What FST needs and GEPA does not provide is written here:

- a GEPA adapter whose metric calls are rollouts of the policy being trained, scored by the same reward
  and feedback code as the score stage (and kept for audit: they are policy rollouts too);
- carrying the population across rounds that each run in a fresh process. Old scores were earned under
  old weights, so a round does not resume the previous round's GEPA state: it re-scores the K members
  of Φ_c on the Pareto set under θ_c and writes them as a new GEPA state (member 0 as GEPA's seed,
  the others as candidates), then lets GEPA continue from that state. Those re-scoring calls are metric
  calls and are counted. Within a round, a killed and retried stage resumes GEPA's own state (its run
  folder lives outside the round's outputs) without re-scoring the seed, but only if the round is set
  up as before (a key over settings, population, problem sets and weights): a rerun after a config
  change starts afresh instead of resuming a finished, stale search;
- the new population: the top-K of GEPA's Pareto front, with lineage mapped to member ids;
- rejecting (and counting) reflection replies that hold no usable prompt.

This builds GEPA states with `GEPAState` and `update_state_with_new_program`, which are GEPA internals:
gepa is pinned (0.1.4) and the tests cover the round trip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from fst.generation import SamplingSettings, chat_prompt_ids, sample
from fst.population import Member
from fst.reflection import extract_prompt
from fst.tasks import Problem, score_reply

log = logging.getLogger(__name__)

COMPONENT = "system_prompt"
_BUDGET_FILE = "fst_budget.json"


class PolicyAdapter:
    """GEPA adapter: a candidate prompt is scored by rollouts of the current policy, one per problem."""

    propose_new_texts = None  # GEPA's own reflective proposal (template + extractor) with our LM

    def __init__(self, model, tokenizer, settings: SamplingSettings, seed: int):
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.seed = seed
        self.records: list[dict] = []  # every metric call, for the audit trail
        self.seconds = 0.0  # time spent generating and scoring (the policy-rollout share of a round)

    def evaluate(self, batch: list[Problem], candidate: dict[str, str], capture_traces: bool = False):
        from gepa import EvaluationBatch

        started = time.perf_counter()
        system = candidate[COMPONENT]
        prompts = [chat_prompt_ids(self.tokenizer, system, p.question) for p in batch]
        done = sample(self.model, self.tokenizer, prompts, self.settings, self.seed + len(self.records))
        scores = [score_reply(p, c.text) for p, c in zip(batch, done, strict=True)]
        traces = [
            {"question": p.question, "reply": c.text, "feedback": s.feedback, "reward": s.reward}
            for p, c, s in zip(batch, done, scores, strict=True)
        ]
        for problem, prompt, completion, trace in zip(batch, prompts, done, traces, strict=True):
            self.records.append(
                {
                    "problem_id": problem.id,
                    "system_text": system,
                    "prompt_ids": prompt,
                    "completion_ids": completion.ids,
                    "logprobs": completion.logprobs,
                    "finish_reason": completion.finish_reason,
                    "completion_text": completion.text,
                    "reward": trace["reward"],
                    "feedback": trace["feedback"],
                }
            )
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


def select_population(
    candidates: list[str],
    parents: list[list[int | None]],
    scores: list[float],
    front: dict[int, set[int]],
    previous: list[Member],
    k: int,
    round_index: int,
) -> list[Member]:
    """Top-k of the Pareto front by mean Pareto-set score; lineage mapped to member ids.

    Index i < len(previous) is previous[i] (the state was started from Φ_c in that order).
    Members share the group equally (weight 1/k); ties keep GEPA's order.
    """
    on_front = sorted({i for ids in front.values() for i in ids}, key=lambda i: (-scores[i], i))[:k]
    ids = {i: previous[i].id for i in range(len(previous))}

    def member_id(i: int) -> str:
        return ids.setdefault(i, f"r{round_index}-c{i}")

    chosen = []
    for i in on_front:
        parent = next((p for p in parents[i] if p is not None), None)
        old = previous[i] if i < len(previous) else None
        chosen.append(
            Member(
                id=member_id(i),
                text=candidates[i],
                parent_id=old.parent_id if old else (member_id(parent) if parent is not None else None),
                weight=1.0 / len(on_front),
                val_score=scores[i],
                round_created=old.round_created if old else round_index,
            )
        )
    return chosen


@dataclass(frozen=True)
class FastSettings:
    budget: int  # GEPA metric calls for proposals this round (re-scoring Φ_c comes on top)
    population_size: int  # K
    reflection_minibatch_size: int = 3
    seed: int = 0


def round_key(identity: str, settings: FastSettings, members, anchors, pareto) -> str:
    """What a resumable GEPA state must match: the caller's identity (weights, reflection, sampling),
    the round's settings, the population it starts from and its problem sets."""
    spec = {
        "identity": identity,
        "settings": asdict(settings),
        "members": [asdict(m) for m in members],
        "anchors": [p.id for p in anchors],
        "pareto": [p.id for p in pareto],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


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
) -> tuple[list[Member], dict]:
    """Φ_c -> Φ_{c+1}. Returns the new population and the round's GEPA accounting.

    `identity` names what the caller knows defines the round beyond the arguments (e.g. the policy's
    content hash): a GEPA state in `run_dir` is resumed only if it was made for the same round.
    """
    import gepa
    from gepa.core.state import GEPAState

    key = round_key(identity, settings, members, anchors, pareto)
    budget_file = run_dir / _BUDGET_FILE
    budget = json.loads(budget_file.read_text()) if budget_file.exists() else {}
    if (run_dir / "gepa_state.bin").exists() and budget.get("round_key") == key:
        log.info("resuming this round's GEPA state in %s", run_dir)
    else:
        if (run_dir / "gepa_state.bin").exists():
            log.warning("GEPA state in %s was made for another set-up of this round (settings, population, "
                        "problems or weights changed): starting the round afresh", run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        state = start_state(adapter, members, pareto, run_dir)
        budget = {"rescoring_calls": state.total_num_evals, "round_key": key}
        budget["max_metric_calls"] = state.total_num_evals + settings.budget
        budget_file.write_text(json.dumps(budget))
    (run_dir / "gepa.stop").unlink(missing_ok=True)  # a leftover stop file would end every later run
    result = gepa.optimize(
        seed_candidate={COMPONENT: members[0].text},
        trainset=anchors,
        valset=pareto,
        adapter=adapter,
        reflection_lm=reflection,
        candidate_selection_strategy="pareto",
        frontier_type="instance",
        reflection_minibatch_size=settings.reflection_minibatch_size,
        max_metric_calls=budget["max_metric_calls"],
        val_evaluation_policy=_skip_seed_policy(),
        run_dir=str(run_dir),
        seed=settings.seed,
        stop_callbacks=[reflection.should_stop],
        display_progress_bar=False,
        raise_on_exception=False,
    )
    state = GEPAState.load(str(run_dir))
    texts = [c[COMPONENT] for c in result.candidates]
    population = select_population(
        texts,
        result.parents,
        result.val_aggregate_scores,
        result.per_val_instance_best_candidates,
        members,
        settings.population_size,
        round_index,
    )
    stats = {
        "metric_calls": state.total_num_evals,
        "rescoring_calls": budget["rescoring_calls"],
        "max_metric_calls": budget["max_metric_calls"],
        "candidates_before": len(members),
        "candidates_after": len(texts),
        "proposals_accepted": len(texts) - len(members),
        "proposals_rejected_unparseable": reflection.rejected,
        "gepa_iterations": state.i + 1,
        "policy_rollout_seconds": round(adapter.seconds, 3),
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


def records_frame(adapter: PolicyAdapter, round_index: int, seed: int) -> pd.DataFrame:
    frame = pd.DataFrame(adapter.records)
    frame.insert(0, "round", round_index)
    frame["seed"] = seed
    frame["backend"] = "transformers"
    return frame
