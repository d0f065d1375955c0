"""The slow stage: TRL's CISPO on stored rollouts of the tiny model (T=2 steps of 8, groups of 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fst.policy import load_policy
from fst.slow import LoraSettings, SlowConfig, run_slow_update

T, B, G = 2, 8, 4
CFG = SlowConfig(
    steps_per_round=T,
    batch_size=B,
    group_size=G,
    learning_rate=1e-2,
    warmup_steps=0,
    max_completion_length=6,
    lora=LoraSettings(r=4, alpha=8),
)
SYSTEM = {"A": "You are careful.", "B": "Think step by step, then answer."}
# group_index -> (member of each sample, reward of each sample). Group 1 mixes two system prompts.
PLAN = {
    0: ("AAAA", [1.0, 1.0, 1.0, 1.0]),
    1: ("AABB", [1.0, 0.0, 1.0, 1.0]),
    2: ("BBBB", [0.0, 1.0, 0.0, 0.0]),
    3: ("ABAB", [0.0, 0.0, 0.0, 0.0]),
}
ZERO_STD_GROUPS = (0, 3)
MIXED_GROUP = 1


def _rollout(model, tokenizer, system: str, user: str, seed: int) -> tuple[list, list, list]:
    """One sampled completion (cut after the first eos) and its log-probs from a forward pass."""
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
    prompt_ids = list(prompt["input_ids"])
    torch.manual_seed(seed)
    out = model.generate(
        torch.tensor([prompt_ids]), do_sample=True, top_k=0, max_new_tokens=CFG.max_completion_length
    )
    completion = out[0, len(prompt_ids) :].tolist()
    if tokenizer.eos_token_id in completion:
        completion = completion[: completion.index(tokenizer.eos_token_id) + 1]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + completion])).logits[0, len(prompt_ids) - 1 : -1]
    logprobs = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
    return prompt_ids, completion, logprobs.tolist()


def _scored_rows(model_dir: Path) -> pd.DataFrame:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    rows = []
    for group, (members, rewards) in PLAN.items():
        user = f"What is {group} + {group}?"
        for sample, (member, reward) in enumerate(zip(members, rewards, strict=True)):
            seed = 10 * group + sample
            prompt_ids, completion, logprobs = _rollout(model, tokenizer, SYSTEM[member], user, seed)
            rows.append({
                "round": 0, "problem_id": f"p{group}", "task": "math", "group_index": group,
                "sample_index": sample, "member_id": member, "system_text": SYSTEM[member],
                "user_text": user, "prompt_ids": prompt_ids,
                "completion_text": tokenizer.decode(completion), "completion_ids": completion,
                "logprobs": logprobs,
                "finish_reason": "stop" if completion[-1] == tokenizer.eos_token_id else "length",
                "backend": "transformers", "seed": seed, "temperature": 1.0, "reward": reward,
                "components": json.dumps({"correct": reward}), "feedback": "", "answer": str(2 * group),
            })  # fmt: skip
    # Stored out of order: the stage must restore (group_index, sample_index) order itself.
    return pd.DataFrame(rows[::-1])


def _write(df: pd.DataFrame, path: Path, round_index: int = 0) -> Path:
    df.assign(round=round_index).to_parquet(path, index=False)
    return path


def _adapter(policy: Path) -> dict[str, torch.Tensor]:
    return load_file(policy / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def rows(tiny_model_dir) -> pd.DataFrame:
    return _scored_rows(tiny_model_dir)


@pytest.fixture(scope="module")
def round0(tiny_model_dir, rows, tmp_path_factory):
    """Round 0 with LoRA, recording the batch TRL computes (advantages, ids, masks) and each step's."""
    from trl import GRPOTrainer

    tmp = tmp_path_factory.mktemp("slow")
    batches, step_inputs = [], []
    score, loss = GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss

    def record_batch(self, inputs):
        batches.append(score(self, inputs))
        return batches[-1]

    def record_step(self, model, inputs):
        step_inputs.append(inputs)
        return loss(self, model, inputs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRPOTrainer, "_generate_and_score_completions", record_batch)
        mp.setattr(GRPOTrainer, "_compute_loss", record_step)
        metrics = run_slow_update(
            _write(rows, tmp / "scored.parquet"), tiny_model_dir, tiny_model_dir,
            tmp / "policy-1", tmp / "state", 0, CFG,
        )  # fmt: skip
    return {"tmp": tmp, "metrics": metrics, "batches": batches, "step_inputs": step_inputs}


def _advantages_by_group(batch) -> dict[int, np.ndarray]:
    adv = batch["advantages"].numpy()
    return {g: adv[g * G : (g + 1) * G] for g in PLAN}


def test_update_changes_lora_weights_and_saves_loadable_policy(round0, tiny_model_dir):
    policy = round0["tmp"] / "policy-1"
    lora_b = [t for name, t in _adapter(policy).items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero
    assert not (policy / "ref").exists()  # only the trained adapter, not TRL's KL reference
    trained, tokenizer = load_policy(policy)
    base, _ = load_policy(tiny_model_dir)
    ids = torch.tensor([tokenizer("What is 1 + 1?")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(trained(ids).logits, base(ids).logits)
    metrics = round0["metrics"]
    assert metrics["global_step"] == T and len(metrics["steps"]) == T
    assert {"loss", "reward", "reward_std", "kl", "entropy", "cispo_clip_ratio", "grad_norm"} <= set(metrics)


def test_served_batch_is_the_stored_rollouts_in_group_order(round0, rows):
    (batch,) = round0["batches"]  # one generation for the whole round
    ordered = rows.sort_values(["group_index", "sample_index"])
    for i, (ids, logprobs) in enumerate(zip(ordered["completion_ids"], ordered["logprobs"], strict=True)):
        assert batch["completion_ids"][i, : len(ids)].tolist() == list(ids)
        assert batch["completion_mask"][i].sum() == len(ids)  # completion tokens only, no prompt
        # Old log-probs are recomputed from the round's starting weights (θ_0 sampled these).
        old = batch["old_per_token_logps"][i, : len(ids)]
        assert torch.allclose(old, torch.tensor(logprobs), atol=1e-4)


def test_steps_take_consecutive_whole_groups_in_file_order(round0):
    (batch,) = round0["batches"]
    steps = round0["step_inputs"]
    assert len(steps) == T
    for k, inputs in enumerate(steps):
        rows = slice(k * B, (k + 1) * B)  # groups k·B/G ... (k+1)·B/G - 1
        assert torch.equal(inputs["advantages"], batch["advantages"][rows])
        assert torch.equal(inputs["completion_ids"], batch["completion_ids"][rows])


def test_zero_variance_group_has_zero_advantage(round0):
    advantages = _advantages_by_group(round0["batches"][0])
    for g in ZERO_STD_GROUPS:
        assert np.all(advantages[g] == 0.0)
    assert np.any(advantages[MIXED_GROUP] != 0.0)
    first_step = round0["metrics"]["steps"][0]
    assert first_step["frac_reward_zero_std"] == len(ZERO_STD_GROUPS) / len(PLAN)


def test_advantage_is_normalised_over_the_whole_mixed_group(round0):
    members, rewards = PLAN[MIXED_GROUP]
    r = np.array(rewards)
    whole_group = (r - r.mean()) / (r.std(ddof=1) + 1e-4)
    per_member = np.zeros_like(r)
    for m in set(members):
        idx = [i for i, x in enumerate(members) if x == m]
        if np.std(r[idx]) > 0:
            per_member[idx] = (r[idx] - r[idx].mean()) / (r[idx].std(ddof=1) + 1e-4)
    got = _advantages_by_group(round0["batches"][0])[MIXED_GROUP]
    assert np.allclose(got, whole_group, atol=1e-5)
    assert not np.allclose(got, per_member, atol=1e-2)


def test_rounds_resume_optimizer_state_and_rerun_is_identical(round0, rows, tiny_model_dir):
    tmp, state = round0["tmp"], round0["tmp"] / "state"

    def run_round(r: int, policy_in: str, out: str) -> dict:
        scored = _write(rows, tmp / f"scored-{r}.parquet", round_index=r)
        return run_slow_update(scored, tmp / policy_in, tiny_model_dir, tmp / out, state, r, CFG)

    first = run_round(1, "policy-1", "policy-2")
    assert first["global_step"] == 2 * T
    assert [s["step"] for s in first["steps"]] == [T + 1, 2 * T]
    checkpoint = state / f"checkpoint-{2 * T}"
    assert (checkpoint / "optimizer.pt").is_file() and (checkpoint / "scheduler.pt").is_file()
    kept = {p.name for p in state.glob("checkpoint-*")}
    assert kept == {f"checkpoint-{T}", f"checkpoint-{2 * T}"}  # to rerun round 1, to run round 2
    again = run_round(1, "policy-1", "policy-2-rerun")
    a, b = _adapter(tmp / "policy-2"), _adapter(tmp / "policy-2-rerun")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again["global_step"] == 2 * T
    before = _adapter(tmp / "policy-1")
    assert any(not torch.equal(a[k], before[k]) for k in a)
    # The KL reference is the round's starting adapter (θ_2), not one restored from a checkpoint.
    assert abs(run_round(2, "policy-2", "policy-3")["steps"][0]["kl"]) < 1e-7


@pytest.mark.parametrize(
    ("edit", "names"),
    [
        (lambda df: df.iloc[1:], "slow.batch_size"),
        (lambda df: df.assign(group_index=[0, *df["group_index"].iloc[1:]]), "rollout.group_size"),
    ],
)
def test_bad_row_counts_raise_naming_the_config_keys(rows, tmp_path, tiny_model_dir, edit, names):
    scored = _write(edit(rows), tmp_path / "scored.parquet")
    with pytest.raises(ValueError, match=names) as err:
        run_slow_update(scored, tiny_model_dir, tiny_model_dir, tmp_path / "out", tmp_path / "state", 0, CFG)
    assert str(scored) in str(err.value)


def test_full_fine_tuning_when_lora_disabled(rows, tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    cfg = SlowConfig.from_dict({
        "steps_per_round": T, "batch_size": B, "group_size": G, "learning_rate": 1e-3,
        "warmup_steps": 0, "max_completion_length": 6, "lora": {"enabled": False},
    })  # fmt: skip
    metrics = run_slow_update(
        _write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
        tmp_path / "policy", tmp_path / "state", 0, cfg,
    )  # fmt: skip
    assert metrics["global_step"] == T
    trained, _ = load_policy(tmp_path / "policy")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [name for name, p in trained.named_parameters() if not torch.equal(p, base.get_parameter(name))]
    assert changed


def test_config_from_dict_nests_lora():
    cfg = SlowConfig.from_dict({"beta": 0.0, "lora": {"r": 8, "target_modules": ["q_proj"]}})
    assert cfg.lora == LoraSettings(r=8, target_modules=("q_proj",))
    assert cfg.beta == 0.0 and cfg.epsilon_high == 4.0
    with pytest.raises(ValueError, match="slow.lora"):
        SlowConfig.from_dict({"lora": {"rank": 8}})
