"""Score stage: reward, its components and the feedback text for every rollout row."""

from __future__ import annotations

import json

import pandas as pd

from fst.tasks import Problem, score_reply


def score_rollouts(rollouts: pd.DataFrame, problems: dict[str, Problem]) -> pd.DataFrame:
    """The rollout rows plus reward, components (JSON), feedback and the reference answer."""
    missing = sorted(set(rollouts["problem_id"]) - set(problems))
    if missing:
        raise ValueError(f"rollouts refer to problems absent from the task data: {missing[:5]}")
    scores = [
        score_reply(problems[pid], text)
        for pid, text in zip(rollouts["problem_id"], rollouts["completion_text"], strict=True)
    ]
    scored = rollouts.copy()
    scored["reward"] = [s.reward for s in scores]
    scored["components"] = [json.dumps(s.components, sort_keys=True) for s in scores]
    scored["feedback"] = [s.feedback for s in scores]
    scored["answer"] = [problems[pid].answer for pid in rollouts["problem_id"]]
    return scored
