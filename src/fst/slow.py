"""Slow stage: T CISPO steps of the slow weights θ on one round's stored, scored rollouts.

TRL's GRPOTrainer(loss_type="cispo") does the RL: group-normalised advantages (z-score over each
consecutive chunk of num_generations completions), old log-probs recomputed from the round's starting
weights (gradient_accumulation_steps=1 < steps_per_generation=T), the truncated-ratio CISPO loss over
completion tokens only, the KL term (reference = the round's starting weights), AdamW, checkpoints and
resume. Here is only what TRL does not do for us:

- serve the stored rollouts through `rollout_func` (nothing is regenerated) and the stored rewards
  through a pass-through reward function;
- keep file order: rows sorted by (group_index, sample_index), so each advantage chunk is exactly one
  stored group, mixed system prompts included, normalised once over the whole group;
- checkpoint housekeeping across rounds run as separate processes.

Zero-variance groups get advantage 0 from TRL and so add nothing to the CISPO term; TRL keeps them in
the batch (they still count in the token normaliser and the KL term). The paper drops them without
refill; watch `frac_reward_zero_std`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import shutil
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from fst.policy import load_tokenizer, policy_kind, save_policy

log = logging.getLogger(__name__)

# The reward function's name is also TRL's metric prefix: rewards/stored_reward/mean.
STORED_REWARD = "stored_reward"
# Name of the frozen copy of a continued adapter that TRL adds as the KL reference.
_REF_ADAPTER = "ref"
# Counters that grow over training: report their last value, not a mean over the round's steps.
_CUMULATIVE = ("epoch", "num_tokens")
_STEP_LINE_KEYS = ("loss", "reward", "reward_std", "kl", "entropy", "grad_norm", "learning_rate")


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def to_peft(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class SlowConfig:
    steps_per_round: int = 4
    batch_size: int = 8
    group_size: int = 4
    learning_rate: float = 1e-4
    beta: float = 0.001
    epsilon_high: float = 4.0
    warmup_steps: int = 10
    max_grad_norm: float = 1.0
    max_completion_length: int = 64
    temperature: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    dtype: str = "float32"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> SlowConfig:
        d = dict(d or {})
        lora = dict(d.pop("lora", None) or {})
        _check_keys("slow", d, cls)
        _check_keys("slow.lora", lora, LoraSettings)
        if "target_modules" in lora:
            lora["target_modules"] = tuple(lora["target_modules"])
        return cls(**d, lora=LoraSettings(**lora))


def _check_keys(section: str, d: dict, cls) -> None:
    unknown = set(d) - {f.name for f in fields(cls)} - {"lora"}
    if unknown:
        raise ValueError(f"unknown {section} settings: {sorted(unknown)}")


def load_round(scored_path: Path, round_index: int, cfg: SlowConfig) -> pd.DataFrame:
    """The round's rows, checked against the config and sorted so each group is one advantage chunk."""
    df = pd.read_parquet(scored_path)
    where = str(scored_path)
    rounds = sorted(set(df["round"].tolist()))
    if rounds != [round_index]:
        raise ValueError(f"{where}: holds rounds {rounds}, expected only round {round_index}")
    T, B, G = cfg.steps_per_round, cfg.batch_size, cfg.group_size
    if B % G:
        raise ValueError(
            f"slow.batch_size ({B}) must be a multiple of the group size ({G}); "
            "change slow.batch_size or rollout.group_size"
        )
    if len(df) != T * B:
        raise ValueError(
            f"{where}: {len(df)} rows in round {round_index}, but the slow stage needs "
            f"slow.steps_per_round × slow.batch_size = {T} × {B} = {T * B}; change slow.steps_per_round, "
            "slow.batch_size, or the problems per round × rollout.group_size so that they agree"
        )
    sizes = df.groupby("group_index").size()
    if (sizes != G).any():
        raise ValueError(
            f"{where}: group sizes {sorted(set(sizes.tolist()))} but every group needs exactly "
            f"rollout.group_size = {G} rows (slow.group_size must equal rollout.group_size)"
        )
    n_completion = df["completion_ids"].map(len)
    if (n_completion != df["logprobs"].map(len)).any():
        raise ValueError(f"{where}: completion_ids and logprobs differ in length")
    if n_completion.max() > cfg.max_completion_length:
        raise ValueError(
            f"{where}: a completion has {n_completion.max()} tokens, more than "
            f"slow.max_completion_length = {cfg.max_completion_length}"
        )
    return df.sort_values(["group_index", "sample_index"], kind="stable").reset_index(drop=True)


def _group_key(group_index: int) -> str:
    return f"group {group_index}"


def group_dataset(rows: pd.DataFrame):
    """TRL's train dataset: one row per stored group, in order; its prompt is the group's key."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [_group_key(g) for g in rows["group_index"].unique()]})


class StoredRollouts:
    """TRL `rollout_func` that serves the stored rollouts of one round instead of generating.

    The dataset has one row per group whose prompt is the group's key. TRL 1.16 passes each prompt
    repeated num_generations times (RepeatSampler's mini-repeat; the rollout_func docstring says
    otherwise), so each run of equal keys is one stored group, served in sample order.
    """

    def __init__(self, rows: pd.DataFrame):
        self.groups = {_group_key(g): group for g, group in rows.groupby("group_index", sort=False)}
        self.completion_tokens = 0

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        served = []
        for key, run in itertools.groupby(prompts):
            group, wanted = self.groups[key], len(list(run))
            if wanted != len(group):
                raise RuntimeError(f"TRL asked for {wanted} completions of {key}; {len(group)} are stored")
            served.append(group)
        rows = pd.concat(served)
        completion_ids = [ids.tolist() for ids in rows["completion_ids"]]
        self.completion_tokens = sum(map(len, completion_ids))
        return {
            "prompt_ids": [ids.tolist() for ids in rows["prompt_ids"]],
            "completion_ids": completion_ids,
            "logprobs": [lp.tolist() for lp in rows["logprobs"]],
            STORED_REWARD: rows["reward"].astype(float).tolist(),
        }


def stored_reward(completions, stored_reward, **kwargs) -> list[float]:
    """The reward the scoring stage gave each completion (forwarded by TRL from rollout_func)."""
    return list(stored_reward)


@functools.cache
def _trainer_class():
    """The trainer subclass and step logger (built on first use: importing trl takes seconds)."""
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from trl.trainer.utils import split_tensor_dict

    class StoredRolloutTrainer(GRPOTrainer):
        def _prepare_inputs(self, generation_batch):
            """TRL's buffering of one generation over T steps, without its row shuffle.

            TRL permutes the round's rows before splitting them over the T steps; keeping file order
            makes step k train on whole groups k·B/G … and the audit order equal the file order.
            Advantages are computed over the whole generation before the split either way.
            """
            if not self.model.training:
                return super()._prepare_inputs(generation_batch)
            step = self._step % self.args.steps_per_generation
            if step == 0 or self._buffered_inputs is None:
                batch = self._generate_and_score_completions(generation_batch)
                _check_loss_mask(batch, self.rollout_func.completion_tokens)
                self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
            return self._buffered_inputs[step]

    class StepLog(TrainerCallback):
        """One INFO line per optimiser step in the job log (tqdm and Trainer's printer are off)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                values = ", ".join(f"{k}={logs[k]:.4g}" for k in _STEP_LINE_KEYS if logs.get(k) is not None)
                log.info("slow step %d/%d: %s", state.global_step, state.max_steps, values)

    return StoredRolloutTrainer, StepLog


def _check_loss_mask(batch: dict, completion_tokens: int) -> None:
    """Only the stored completion tokens are training targets: never prompt, padding or masked tokens."""
    if "tool_mask" in batch or int(batch["num_items_in_batch"]) != completion_tokens:
        raise RuntimeError(
            f"TRL's loss mask covers {int(batch['num_items_in_batch'])} tokens, "
            f"but {completion_tokens} completion tokens were served"
        )


def _load_model(policy_in: Path, base_model_dir: Path, cfg: SlowConfig):
    """(model, peft_config for TRL or None). A LoRA policy continues its adapter; round 0 gets a new one."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, cfg.dtype)
    if policy_kind(policy_in) == "lora":
        if not cfg.lora.enabled:
            raise ValueError(f"{policy_in} is a LoRA adapter but slow.lora.enabled is false")
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=dtype)
        return PeftModel.from_pretrained(base, policy_in, is_trainable=True), None
    if cfg.lora.enabled and Path(policy_in).resolve() != Path(base_model_dir).resolve():
        raise ValueError(
            f"slow.lora.enabled: policy_in ({policy_in}) must be the base model or a LoRA policy"
        )
    model = AutoModelForCausalLM.from_pretrained(policy_in, dtype=dtype)
    return model, cfg.lora.to_peft() if cfg.lora.enabled else None


def grpo_args(cfg: SlowConfig, state_dir: Path, round_index: int):
    """The stage's GRPOConfig: checkpoints in state_dir, round_index's T steps."""
    from trl import GRPOConfig

    T = cfg.steps_per_round
    return GRPOConfig(
        output_dir=str(state_dir),
        loss_type="cispo",
        epsilon_high=cfg.epsilon_high,  # TRL defaults it to epsilon (0.2): every ratio capped at 0.2
        beta=cfg.beta,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        num_generations=cfg.group_size,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=1,
        steps_per_generation=T,  # one generation = the whole round; old log-probs from θ_c
        shuffle_dataset=False,
        max_steps=(round_index + 1) * T,
        ignore_data_skip=True,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",  # independent of the number of rounds
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        max_grad_norm=cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=T,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        bf16=False,
        gradient_checkpointing=False,
        seed=cfg.seed,
    )


def _checkpoint(state_dir: Path, step: int) -> Path:
    return Path(state_dir) / f"checkpoint-{step}"


def _prune_checkpoints(state_dir: Path, keep: set[int]) -> None:
    """Optimizer state is working state: keep only the checkpoints a run or rerun resumes from."""
    for path in Path(state_dir).glob("checkpoint-*"):
        if int(path.name.rsplit("-", 1)[1]) not in keep:
            shutil.rmtree(path)


def _drop_ref_adapter(checkpoint: Path) -> None:
    """Remove TRL's frozen KL-reference adapter from a checkpoint.

    On resume, Trainer loads every adapter sub-folder of a checkpoint (and then not the root adapter),
    which would overwrite the next round's reference (θ_c, copied from policy_in) with the previous
    round's. The reference is rebuilt from policy_in every round, so it has no place in the state.
    """
    shutil.rmtree(checkpoint / _REF_ADAPTER, ignore_errors=True)


def _round_logs(log_history: list[dict], first_step: int) -> list[dict]:
    return [e for e in log_history if "loss" in e and e["step"] > first_step]


def _aggregate(steps: list[dict]) -> dict:
    """Mean over the round's steps of each metric (generation metrics appear only on the first step)."""
    keys = sorted({k for s in steps for k in s} - {"step"})
    out = {}
    for key in keys:
        values = [s[key] for s in steps if isinstance(s.get(key), int | float)]
        if values:
            out[key] = values[-1] if key in _CUMULATIVE else sum(values) / len(values)
    return out


def run_slow_update(
    scored_path: Path,
    policy_in: Path,
    base_model_dir: Path,
    policy_out: Path,
    state_dir: Path,
    round_index: int,
    cfg: SlowConfig,
) -> dict:
    """Train θ_c → θ_{c+1} on the round's stored rollouts; return TRL's metrics for the round.

    Resumes optimizer, scheduler and RNG from state_dir/checkpoint-{round_index·T} (written by the
    previous round), so a rerun of the same round starts from the same state and gives the same result.
    """
    from transformers import PrinterCallback

    rows = load_round(Path(scored_path), round_index, cfg)
    state_dir = Path(state_dir)
    start = round_index * cfg.steps_per_round
    resume = _checkpoint(state_dir, start) if round_index > 0 else None
    if resume is not None and not resume.is_dir():
        raise FileNotFoundError(
            f"round {round_index} resumes the optimizer state from {resume}: "
            f"run round {round_index - 1} first with the same state_dir"
        )
    _prune_checkpoints(state_dir, keep={start})  # a later checkpoint is stale from an earlier run

    model, peft_config = _load_model(Path(policy_in), Path(base_model_dir), cfg)
    trainer_cls, step_log = _trainer_class()
    with warnings.catch_warnings():
        # rollout_func is marked experimental; trl is pinned to the version this was checked against.
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        trainer = trainer_cls(
            model=model,
            reward_funcs=stored_reward,
            args=grpo_args(cfg, state_dir, round_index),
            train_dataset=group_dataset(rows),
            processing_class=load_tokenizer(Path(policy_in)),
            peft_config=peft_config,
            rollout_func=StoredRollouts(rows),
            callbacks=[step_log()],
        )
    trainer.remove_callback(PrinterCallback)
    log.info(
        "slow round %d: steps %d..%d on %d rollouts",
        round_index,
        start + 1,
        start + cfg.steps_per_round,
        len(rows),
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    end = trainer.state.global_step
    _drop_ref_adapter(_checkpoint(state_dir, end))
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if _REF_ADAPTER in getattr(trained, "peft_config", {}):
        trained.delete_adapter(_REF_ADAPTER)  # save only the trained adapter
    save_policy(trained, Path(policy_out), Path(base_model_dir), round=round_index, global_step=end)
    _prune_checkpoints(state_dir, keep={start, end})

    steps = _round_logs(trainer.state.log_history, start)
    return {**_aggregate(steps), "round": round_index, "global_step": end, "steps": steps}
