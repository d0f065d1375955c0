"""The slow stage: TRL's CISPO on stored rollouts of the tiny model (T=2 steps of 8, groups of 4)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fst.policy import load_policy
from fst.slow import LoraSettings, SlowConfig, round_counts, run_slow_update

T, B, G = 2, 8, 4
LORA = LoraSettings(
    enabled=True, r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")
)
CFG = SlowConfig(
    steps_per_round=T,
    batch_size=B,
    group_size=G,
    learning_rate=1e-2,
    beta=0.001,
    kl_reference="base",
    epsilon_high=4.0,
    scale_rewards="group",
    zero_variance_groups="drop",
    loss_aggregation="seq_mean_token_mean",
    warmup_steps=0,
    max_grad_norm=1.0,
    max_completion_length=6,
    temperature=1.0,
    gpus=1,
    gradient_checkpointing=False,
    lora=LORA,
    dtype="float32",
    device="auto",
    importance_correction="auto",
    importance_cap=4.0,
    seed=0,
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
    """One sampled completion (cut after the first eos, and to 2-6 tokens so that lengths differ, as
    the loss aggregations then differ) and its log-probs from a forward pass."""
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
    completion = completion[: 2 + seed % 5]
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


def _run_recorded(scored: Path, policy_in: Path, base: Path, out: Path, state: Path, round_index: int,
                  cfg: SlowConfig, reference: Path | None = None) -> dict:
    """run_slow_update, recording the trainer, TRL's generation batch, and each step's inputs, loss
    and per-token log-probs (the forward pass that takes gradients)."""
    from trl import GRPOTrainer

    record = {"batches": [], "step_inputs": [], "losses": [], "logps": [], "trainer": None}
    score, loss = GRPOTrainer._generate_and_score_completions, GRPOTrainer._compute_loss
    logps = GRPOTrainer._get_per_token_logps_and_entropies

    def record_batch(self, inputs):
        record["trainer"] = self
        record["batches"].append(score(self, inputs))
        return record["batches"][-1]

    def record_step(self, model, inputs):
        record["step_inputs"].append(inputs)
        record["losses"].append(loss(self, model, inputs))
        return record["losses"][-1]

    def record_logps(self, *args, **kwargs):
        out = logps(self, *args, **kwargs)
        if torch.is_grad_enabled():
            record["logps"].append(out[0].detach())
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRPOTrainer, "_generate_and_score_completions", record_batch)
        mp.setattr(GRPOTrainer, "_compute_loss", record_step)
        mp.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", record_logps)
        record["metrics"] = run_slow_update(scored, policy_in, base, out, state, round_index, cfg, reference)
    return record


@pytest.fixture(scope="module")
def round0(tiny_model_dir, rows, tmp_path_factory):
    """Round 0 with LoRA, recording the batch TRL computes (advantages, ids, masks) and each step's."""
    tmp = tmp_path_factory.mktemp("slow")
    record = _run_recorded(_write(rows, tmp / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp / "policy-1", tmp / "state", 0, CFG)
    return {"tmp": tmp, **record}


def _advantages_by_group(batch) -> dict[int, np.ndarray]:
    adv = batch["advantages"].numpy()
    return {g: adv[g * G : (g + 1) * G] for g in PLAN}


def _completion_logps(model, rows: pd.DataFrame, temperature: float) -> list[torch.Tensor]:
    """log π(token) of each stored completion under `model` at `temperature`, one unpadded row at a time."""
    out = []
    for prompt, completion in zip(rows["prompt_ids"], rows["completion_ids"], strict=True):
        ids = torch.tensor([list(prompt) + list(completion)])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1].float() / temperature
        out.append(logits.log_softmax(-1).gather(1, torch.tensor(list(completion))[:, None])[:, 0])
    return out


def _k3(ref: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    return torch.exp(ref - logp) - (ref - logp) - 1


def _ordered(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.sort_values(["group_index", "sample_index"]).reset_index(drop=True)


def _live_rows(rows: pd.DataFrame) -> np.ndarray:
    """Per row (file order): does its group's reward vary?"""
    return rows.groupby("group_index")["reward"].transform("nunique").to_numpy() > 1


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


def test_method_choices_reach_the_trainer(round0):
    trainer = round0["trainer"]
    assert trainer.loss_type == "cispo"
    assert trainer.epsilon_high == CFG.epsilon_high  # TRL would default it to epsilon (0.2)
    assert trainer.scale_rewards == CFG.scale_rewards
    assert trainer.beta == CFG.beta
    assert trainer.temperature == CFG.temperature
    assert trainer.importance_sampling_level == "token"
    assert trainer.num_iterations == 1 and trainer.args.steps_per_generation == T
    assert trainer.args.gradient_accumulation_steps == 1
    assert trainer.mask_truncated_completions is False and trainer.top_entropy_quantile == 1.0
    assert trainer.off_policy_mask_threshold is None and trainer.args.use_bias_correction_kl is False
    assert trainer.args.sync_ref_model is False
    assert trainer.args.lr_scheduler_type == "constant_with_warmup" and trainer.args.weight_decay == 0.0
    assert (trainer.args.adam_beta1, trainer.args.adam_beta2, trainer.args.adam_epsilon) == (0.9, 0.999, 1e-8)
    assert type(trainer.optimizer.optimizer).__name__ == "AdamW"
    # The KL reference of a LoRA policy is the base: adapters disabled, no `ref` copy of the adapter.
    assert "ref" not in trainer.accelerator.unwrap_model(trainer.model).peft_config


def test_other_method_settings_reach_the_trainer(rows, tmp_path, tiny_model_dir):
    cfg = replace(CFG, scale_rewards="none", epsilon_high=2.5, beta=0.01)
    record = _run_recorded(_write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, cfg)
    trainer = record["trainer"]
    assert (trainer.scale_rewards, trainer.epsilon_high, trainer.beta) == ("none", 2.5, 0.01)
    r = np.array(PLAN[MIXED_GROUP][1])
    got = _advantages_by_group(record["batches"][0])[MIXED_GROUP]
    assert np.allclose(got, r - r.mean(), atol=1e-6)  # not divided by the group's std


def test_served_batch_is_the_stored_rollouts_in_group_order(round0, rows):
    (batch,) = round0["batches"]  # one generation for the whole round
    ordered = _ordered(rows)
    for i, (ids, logprobs) in enumerate(zip(ordered["completion_ids"], ordered["logprobs"], strict=True)):
        assert batch["completion_ids"][i, : len(ids)].tolist() == list(ids)
        assert batch["completion_mask"][i].sum() == len(ids)  # completion tokens only, no prompt
        # Old log-probs are recomputed from the round's starting weights (θ_0 sampled these).
        old = batch["old_per_token_logps"][i, : len(ids)]
        assert torch.allclose(old, torch.tensor(logprobs), atol=1e-4)
    assert round0["metrics"]["steps"][0]["sampling/sampling_logp_difference/max"] < 1e-4


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


def _independent_cispo_losses(record, rows, base, cfg: SlowConfig, weights=None) -> list[float]:
    """Each step's loss from the method's formula, computed apart from TRL: live groups only,
    −min(ρ, ε_high)·A·log π + β·k3(π_ref = base); averaged per completion then over the step's live
    completions (seq_mean_token_mean), or summed over live tokens / the step's live tokens."""
    ordered = _ordered(rows)
    rewards = ordered["reward"].to_numpy().reshape(-1, G)
    centred = rewards - rewards.mean(1, keepdims=True)
    scale = rewards.std(1, ddof=1, keepdims=True) + 1e-4 if cfg.scale_rewards == "group" else 1.0
    advantages = (centred / scale).reshape(-1)
    live = _live_rows(ordered)
    old = record["batches"][0]["old_per_token_logps"]
    ref = _completion_logps(base, ordered, cfg.temperature)
    losses = []
    for step, logp in enumerate(record["logps"]):
        total, count = 0.0, 0
        per_completion = cfg.loss_aggregation == "seq_mean_token_mean"
        for j in range(B):
            i = step * B + j
            if not live[i]:
                continue
            n = len(ordered["completion_ids"][i])
            lp, lp_old = logp[j, :n].double(), old[i, :n].double()
            ratio = torch.clamp(torch.exp(lp - lp_old), max=cfg.epsilon_high)
            w = 1.0 if weights is None else weights[i][:n].double()
            token_loss = -ratio * advantages[i] * w * lp + cfg.beta * _k3(ref[i].double(), lp)
            total += (token_loss.mean() if per_completion else token_loss.sum()).item()
            count += 1 if per_completion else n
        losses.append(total / count)
    return losses


def test_loss_is_cispo_over_live_groups_normalised_by_their_tokens(rows, tmp_path, tiny_model_dir):
    """Dead groups (equal rewards) leave the loss AND its normaliser; ε_high truncates the ratio; the
    KL term's reference is the base model. A cap of 1.0 with a large step makes the truncation bind."""
    cfg = replace(CFG, epsilon_high=1.0, learning_rate=0.05, beta=0.05)
    record = _run_recorded(_write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, cfg)
    base, _ = load_policy(tiny_model_dir)
    expected = _independent_cispo_losses(record, rows, base, cfg)
    got = [loss.item() for loss in record["losses"]]
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-6)
    steps = record["metrics"]["steps"]
    assert steps[1]["cispo_clip_ratio"] > 0  # the cap mattered in step 2
    # Per step: one dead group of two (groups 0 | 1, then 2 | 3), counted in the metrics.
    assert [s["groups/dropped_groups"] for s in steps] == [1, 1]
    assert [s["groups/live_groups"] for s in steps] == [1, 1]
    assert record["metrics"]["groups/dropped_groups"] == len(ZERO_STD_GROUPS)


def test_token_mean_divides_each_step_by_its_live_tokens(rows, tmp_path, tiny_model_dir):
    cfg = replace(CFG, loss_aggregation="token_mean", epsilon_high=1.0, learning_rate=0.05)
    record = _run_recorded(_write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, cfg)
    expected = _independent_cispo_losses(record, rows, load_policy(tiny_model_dir)[0], cfg)
    assert np.allclose([loss.item() for loss in record["losses"]], expected, rtol=1e-4, atol=1e-6)
    per_completion = _independent_cispo_losses(
        record, rows, load_policy(tiny_model_dir)[0], replace(cfg, loss_aggregation="seq_mean_token_mean")
    )
    assert not np.allclose(expected, per_completion, rtol=1e-3)  # completions of unequal lengths


def test_round_token_mean_divides_by_the_rounds_live_tokens(rows, tmp_path, tiny_model_dir):
    cfg = replace(CFG, loss_aggregation="round_token_mean")
    record = _run_recorded(_write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, cfg)
    ordered = _ordered(rows)
    live_tokens = ordered["completion_ids"].map(len).to_numpy() * _live_rows(ordered)
    per_step = live_tokens.reshape(T, B).sum(1)
    token_mean = _independent_cispo_losses(record, rows, load_policy(tiny_model_dir)[0], cfg)
    expected = [m * n / (per_step.sum() / T) for m, n in zip(token_mean, per_step, strict=True)]
    assert np.allclose([loss.item() for loss in record["losses"]], expected, rtol=1e-4, atol=1e-6)


def test_keeping_zero_variance_groups_is_an_explicit_choice(rows, tmp_path, tiny_model_dir):
    cfg = replace(CFG, zero_variance_groups="keep")
    record = _run_recorded(_write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, cfg)
    steps = record["metrics"]["steps"]
    assert [s["groups/dropped_groups"] for s in steps] == [0, 0]
    assert [s["groups/zero_variance_groups"] for s in steps] == [1, 1]
    tokens = _ordered(rows)["completion_ids"].map(len).to_numpy().reshape(T, B).sum(1)
    assert [s["groups/live_tokens"] for s in steps] == tokens.tolist()


def _round1(round0, rows, tiny_model_dir, cfg: SlowConfig, tmp: Path, scored: pd.DataFrame | None = None):
    """Round 1 from round 0's policy and optimizer state (copied, so each test has its own)."""
    import shutil

    shutil.copytree(round0["tmp"] / "state", tmp / "state")
    return _run_recorded(_write(rows if scored is None else scored, tmp / "scored.parquet", round_index=1),
                         round0["tmp"] / "policy-1", tiny_model_dir, tmp / "policy-2", tmp / "state", 1, cfg)


def _kl_to_base_of_first_step(policy_dir: Path, base_dir: Path, rows: pd.DataFrame, cfg: SlowConfig) -> float:
    """k3 KL estimate between the round's starting policy and the BASE on step 1's live completions,
    aggregated as the loss aggregates it (per completion, then the mean; or over all tokens)."""
    ordered = _ordered(rows).iloc[:B]
    live = _live_rows(_ordered(rows))[:B]
    policy, _ = load_policy(policy_dir)
    base, _ = load_policy(base_dir)
    pairs = zip(_completion_logps(policy, ordered, cfg.temperature),
                _completion_logps(base, ordered, cfg.temperature), live, strict=True)
    kls = [_k3(ref, logp) for logp, ref, keep in pairs if keep]
    if cfg.loss_aggregation == "seq_mean_token_mean":
        return torch.stack([kl.mean() for kl in kls]).mean().item()
    return torch.cat(kls).mean().item()


def test_kl_reference_is_the_base_model_in_later_rounds_lora(round0, rows, tmp_path, tiny_model_dir):
    record = _round1(round0, rows, tiny_model_dir, CFG, tmp_path)
    expected = _kl_to_base_of_first_step(round0["tmp"] / "policy-1", tiny_model_dir, rows, CFG)
    assert expected > 1e-6  # θ_1 has moved away from the base
    assert record["metrics"]["steps"][0]["kl"] == pytest.approx(expected, rel=1e-3)


def test_kl_reference_is_the_base_model_in_later_rounds_full(rows, tmp_path, tiny_model_dir):
    cfg = replace(CFG, lora=replace(LORA, enabled=False), learning_rate=1e-3)
    _run_recorded(_write(rows, tmp_path / "scored-0.parquet"), tiny_model_dir, tiny_model_dir,
                  tmp_path / "policy-1", tmp_path / "state", 0, cfg)
    record = _run_recorded(_write(rows, tmp_path / "scored-1.parquet", round_index=1), tmp_path / "policy-1",
                           tiny_model_dir, tmp_path / "policy-2", tmp_path / "state", 1, cfg)
    expected = _kl_to_base_of_first_step(tmp_path / "policy-1", tiny_model_dir, rows, cfg)
    assert expected > 1e-6
    assert record["metrics"]["steps"][0]["kl"] == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("lora", [True, False])
def test_a_run_that_starts_from_a_checkpoint_keeps_it_as_kl_reference(rows, tmp_path, tiny_model_dir, lora):
    """A plasticity run: a fresh RL run (round 0, new optimizer) from a phase-A checkpoint. Its round 1
    KL is taken against that checkpoint (its starting weights), not against the base model."""
    cfg = CFG if lora else replace(CFG, lora=replace(LORA, enabled=False), learning_rate=1e-3)
    start = tmp_path / "phase-a"
    _run_recorded(_write(rows, tmp_path / "a.parquet"), tiny_model_dir, tiny_model_dir, start,
                  tmp_path / "a-state", 0, cfg)
    _run_recorded(_write(rows, tmp_path / "b0.parquet"), start, tiny_model_dir, tmp_path / "b-1",
                  tmp_path / "b-state", 0, cfg, reference=start)
    record = _run_recorded(_write(rows, tmp_path / "b1.parquet", round_index=1), tmp_path / "b-1",
                           tiny_model_dir, tmp_path / "b-2", tmp_path / "b-state", 1, cfg, reference=start)
    expected = _kl_to_base_of_first_step(tmp_path / "b-1", start, rows, cfg)
    to_base = _kl_to_base_of_first_step(tmp_path / "b-1", tiny_model_dir, rows, cfg)
    assert expected > 1e-6 and abs(expected - to_base) > 0.05 * to_base  # the two references differ
    assert record["metrics"]["steps"][0]["kl"] == pytest.approx(expected, rel=1e-3)
    assert not (tmp_path / "b-2" / "ref").exists()  # only the trained adapter is saved, not the reference


def test_kl_reference_round_start_is_an_explicit_choice(round0, rows, tmp_path, tiny_model_dir):
    record = _round1(round0, rows, tiny_model_dir, replace(CFG, kl_reference="round_start"), tmp_path)
    assert abs(record["metrics"]["steps"][0]["kl"]) < 1e-7  # θ_1 against itself at the first step


def test_step_without_live_group_leaves_weights_and_optimizer_unchanged(
    round0, rows, tmp_path, tiny_model_dir
):
    dead = rows.assign(reward=0.0)  # every group's rewards equal: no signal anywhere
    record = _round1(round0, rows, tiny_model_dir, CFG, tmp_path, scored=dead)
    before, after = _adapter(round0["tmp"] / "policy-1"), _adapter(tmp_path / "policy-2")
    assert all(torch.equal(before[k], after[k]) for k in before)  # Adam's momentum would move them
    checkpoints = [tmp_path / "state" / f"checkpoint-{s}" for s in (T, 2 * T)]
    moments = [torch.load(c / "optimizer.pt")["state"] for c in checkpoints]
    for state_before, state_after in zip(moments[0].values(), moments[1].values(), strict=True):
        assert torch.equal(state_before["exp_avg"], state_after["exp_avg"])
    metrics = record["metrics"]
    assert metrics["skipped_step"] == T and metrics["groups/dropped_groups"] == len(PLAN)
    assert metrics["global_step"] == 2 * T  # the schedule advances...
    assert round_counts(metrics, CFG) == {
        "rl_steps": T, "optimizer_steps": 0, "skipped_steps": T, "rollouts_trained": 0}


def test_a_skipped_step_is_no_optimiser_step_and_does_not_dilute_the_round_loss(
    rows, tmp_path, tiny_model_dir
):
    """Step 2's groups (2, 3) all dead: the round made one update, on one live group's rollouts."""
    dead_second = rows.assign(reward=np.where(rows["group_index"] >= 2, 0.0, rows["reward"]))
    record = _run_recorded(_write(dead_second, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
                           tmp_path / "policy", tmp_path / "state", 0, CFG)
    metrics = record["metrics"]
    assert [s["skipped_step"] for s in metrics["steps"]] == [0, 1]
    assert round_counts(metrics, CFG) == {
        "rl_steps": T, "optimizer_steps": 1, "skipped_steps": 1, "rollouts_trained": G}
    assert metrics["loss"] == pytest.approx(metrics["steps"][0]["loss"])
    assert metrics["grad_norm"] == pytest.approx(metrics["steps"][0]["grad_norm"])


def test_rollouts_sampled_by_the_rollout_stage_are_on_policy_for_the_trainer(tiny, tiny_model_dir, tmp_path):
    """The real path: generation.sample at τ feeds the trainer, whose old log-probs (recomputed at τ
    from the same weights) equal the stored sampling log-probs; sampling at another temperature is
    caught by the same audit."""
    from fst.generation import SamplingSettings
    from fst.population import seed_population
    from fst.rollout import generate_rollouts
    from fst.tasks import Problem

    model, tokenizer = tiny
    tau = 0.7
    problems = [Problem(f"p{i}", "arithmetic", f"What is {i} + {i}?", str(2 * i), {}) for i in range(4)]

    def gaps(sampled_at: float, out: str) -> dict:
        settings = SamplingSettings(max_new_tokens=6, temperature=sampled_at, batch_size=16)
        rollouts = generate_rollouts(model, tokenizer, problems, seed_population("Be careful."), G, settings,
                                     seed=3, round_index=0, backend="transformers")
        scored = rollouts.assign(reward=[float(i % 2) for i in range(len(rollouts))])
        cfg = replace(CFG, temperature=tau)
        metrics = run_slow_update(_write(scored, tmp_path / f"{out}.parquet"), tiny_model_dir, tiny_model_dir,
                                  tmp_path / out, tmp_path / f"state-{out}", 0, cfg)
        return metrics["steps"][0]

    on_policy = gaps(tau, "same")
    assert on_policy["sampling/sampling_logp_difference/max"] < 1e-4
    off_policy = gaps(1.0, "other")
    assert off_policy["sampling/sampling_logp_difference/mean"] > 1e-2


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

    cfg = replace(CFG, learning_rate=1e-3, lora=replace(LORA, enabled=False))
    metrics = run_slow_update(
        _write(rows, tmp_path / "scored.parquet"), tiny_model_dir, tiny_model_dir,
        tmp_path / "policy", tmp_path / "state", 0, cfg,
    )  # fmt: skip
    assert metrics["global_step"] == T
    trained, _ = load_policy(tmp_path / "policy")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [name for name, p in trained.named_parameters() if not torch.equal(p, base.get_parameter(name))]
    assert changed


def test_config_from_dict_needs_every_setting():
    settings = asdict(CFG)
    assert SlowConfig.from_dict(settings) == CFG
    with pytest.raises(ValueError, match=r"missing \['beta'\]"):
        SlowConfig.from_dict({k: v for k, v in settings.items() if k != "beta"})
    with pytest.raises(ValueError, match="slow.lora"):
        SlowConfig.from_dict(settings | {"lora": {**settings["lora"], "rank": 8}})


def _perturbed(rows: pd.DataFrame) -> pd.DataFrame:
    """Stored sampling log-probs moved off the policy's: token t of a row lowered by (t mod 3)·ln 3,
    as if another engine had sampled it less likely (weights 1, 3 and 9, the last past the cap)."""
    shifted = [[lp - (t % 3) * np.log(3.0) for t, lp in enumerate(row)] for row in rows["logprobs"]]
    return rows.assign(logprobs=shifted, backend="vllm")


def test_importance_correction_weights_the_policy_term_by_the_truncated_ratio(rows, tmp_path, tiny_model_dir):
    """vLLM rollouts (auto): each token's policy term gets min(π_θc / π_sample, cap) from the stored
    log-probs; the loss equals the method's formula with those weights (the KL term unweighted)."""
    cfg = replace(CFG, importance_cap=4.0, beta=0.05)
    record = _run_recorded(_write(_perturbed(rows), tmp_path / "scored.parquet"), tiny_model_dir,
                           tiny_model_dir, tmp_path / "policy", tmp_path / "state", 0, cfg)
    ordered = _ordered(rows)
    expected_w = [np.minimum(3.0 ** (np.arange(len(c)) % 3), 4.0) for c in ordered["completion_ids"]]
    step_advantages = torch.cat([inputs["advantages"] for inputs in record["step_inputs"]])
    base_advantages = record["batches"][0]["advantages"]
    for i, w in enumerate(expected_w):
        got = step_advantages[i, : len(w)].numpy()
        assert np.allclose(got, base_advantages[i].item() * w, rtol=1e-3, atol=1e-6)
    weights = [torch.tensor(w) for w in expected_w]
    expected = _independent_cispo_losses(record, rows, load_policy(tiny_model_dir)[0], cfg, weights)
    assert np.allclose([loss.item() for loss in record["losses"]], expected, rtol=1e-3, atol=1e-6)
    first = record["metrics"]["steps"][0]
    assert first["sampling/importance_weight/capped_fraction"] > 0
    assert first["sampling/importance_weight/min"] > 0.99


def test_importance_correction_is_off_for_transformers_rollouts_unless_asked(rows, tmp_path, tiny_model_dir):
    perturbed = _perturbed(rows).assign(backend="transformers")
    off = _run_recorded(_write(perturbed, tmp_path / "a.parquet"), tiny_model_dir, tiny_model_dir,
                        tmp_path / "pa", tmp_path / "sa", 0, CFG)
    assert all(inputs["advantages"].dim() == 1 for inputs in off["step_inputs"])
    assert "sampling/importance_weight/mean" not in off["metrics"]["steps"][0]
    on = _run_recorded(_write(perturbed, tmp_path / "b.parquet"), tiny_model_dir, tiny_model_dir,
                       tmp_path / "pb", tmp_path / "sb", 0, replace(CFG, importance_correction="on"))
    assert all(inputs["advantages"].dim() == 2 for inputs in on["step_inputs"])
