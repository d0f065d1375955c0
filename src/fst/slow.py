"""Slow stage: T CISPO steps of the slow weights θ on one round's stored, scored rollouts.

TRL's GRPOTrainer(loss_type="cispo") does the RL: group-normalised advantages (over each consecutive
chunk of num_generations completions), old log-probs recomputed from the round's starting weights
(gradient_accumulation_steps=1 < steps_per_generation=T), the truncated-ratio CISPO loss over
completion tokens only, the β·KL term, AdamW, checkpoints and resume. Every choice the method names
is set explicitly in `grpo_args`, never left to a TRL default; what TRL fixes in code and offers no
setting for is stated here: the group std is Bessel-corrected with +1e-4 in the denominator, and the
k3 KL estimate is not clamped. Here is only what TRL does not do for us:

- serve the stored rollouts through `rollout_func` (nothing is regenerated) and the stored rewards
  through a pass-through reward function;
- keep file order: rows sorted by (group_index, sample_index), so each advantage chunk is exactly one
  stored group, mixed system prompts included, normalised once over the whole group;
- the KL reference is the run's starting weights in every round (`slow.kl_reference: base`, the paper's
  and verl's choice): the base model, or for a plasticity run the phase-A checkpoint it starts from (a
  fresh RL run's reference is its initial model). TRL would use the round's starting weights (it copies
  a continued LoRA adapter into a `ref` adapter, and reloads a full model from the folder it came from);
- zero-variance groups (all rewards equal: no signal) are dropped from the loss, its normaliser and
  the KL term, without refill (`slow.zero_variance_groups: drop`): TRL keeps them in the batch, so the
  effective learning rate would move with the share of dead groups. A step whose groups are all dead
  takes no optimiser step (see `_trainer_class`);
- the loss aggregation (`slow.loss_aggregation`, see `split_into_steps`): `seq_mean_token_mean`
  (the method's "token losses averaged per prompt": each completion's token mean, then the mean over
  the step's live completions; TRL's cispo has only a token sum over a token count), `token_mean`
  (the step's live tokens, verl's default) or `round_token_mean` (TRL's own: the round's tokens / T);
- an audit of on-policy-ness: the largest gap between the stored sampling log-probs and the old
  log-probs the trainer recomputes (`sampling/sampling_logp_difference/*`);
- checkpoint housekeeping across rounds run as separate processes;
- several processes (`slow.gpus` > 1, started by `accelerate launch`, FSDP or DDP): TRL gathers the
  rewards and normalises each group once over all processes, but hands each process a consecutive
  share of the round and lets every process divide its loss by its own share of our counts. Here
  the groups are ordered so that each global step trains the same groups as in one process
  (`rank_order`), each process holds whole groups, and the per-step counts (loss normaliser, dead
  groups, the skip) are summed over processes (`split_into_steps`): the same training as in one
  process. Only the main process writes the policy (a full state dict gathered from FSDP's shards).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from fst.device import Runtime, resolve
from fst.policy import load_tokenizer, policy_kind, save_policy

log = logging.getLogger(__name__)

# The reward function's name is also TRL's metric prefix: rewards/stored_reward/mean.
STORED_REWARD = "stored_reward"
# Name of the frozen copy of a continued adapter that TRL adds as the KL reference.
_REF_ADAPTER = "ref"
# Counters that grow over training: report their last value, not a mean over the round's steps.
_CUMULATIVE = ("epoch", "num_tokens")
# Per-step counts: the round's figure is their sum.
_SUMMED = ("groups/live_groups", "groups/dropped_groups", "groups/zero_variance_groups", "groups/live_tokens",
           "skipped_step")
# What the Trainer logs for a step even when it took none (a skipped step logs 0): not averaged in.
_UPDATE_ONLY = ("loss", "grad_norm")
_STEP_LINE_KEYS = ("loss", "reward", "reward_std", "kl", "entropy", "grad_norm", "learning_rate")


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool
    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]

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
    """The slow stage's settings. No defaults here: they live in the config schema (fst.settings)."""

    steps_per_round: int
    batch_size: int
    group_size: int
    learning_rate: float
    beta: float
    kl_reference: str  # "base" | "round_start"
    epsilon_high: float
    scale_rewards: str  # "group" | "none"
    zero_variance_groups: str  # "drop" | "keep"
    loss_aggregation: str  # "seq_mean_token_mean" | "token_mean" | "round_token_mean"
    importance_correction: str  # "auto" | "on" | "off"
    importance_cap: float
    warmup_steps: int
    max_grad_norm: float
    max_completion_length: int
    temperature: float
    gpus: int  # processes (one per GPU) the stage runs in; several: launched by accelerate
    gradient_checkpointing: bool
    lora: LoraSettings
    dtype: str  # model.dtype as configured (auto included); resolved on the stage's machine
    device: str  # model.device as configured
    seed: int

    @classmethod
    def from_dict(cls, d: dict) -> SlowConfig:
        """From the stage's settings JSON; every field must be there (a missing one is a bug upstream)."""
        d = dict(d)
        lora = dict(d.pop("lora"))
        _check_keys("slow", d, cls)
        _check_keys("slow.lora", lora, LoraSettings)
        lora["target_modules"] = tuple(lora["target_modules"])
        return cls(**d, lora=LoraSettings(**lora))


def _check_keys(section: str, d: dict, cls) -> None:
    expected = {f.name for f in fields(cls)} - {"lora"}
    unknown, missing = set(d) - expected, expected - set(d)
    if unknown or missing:
        raise ValueError(f"{section} settings: unknown {sorted(unknown)}, missing {sorted(missing)}")


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


def rank_order(groups: int, steps: int, processes: int) -> list[int]:
    """The order of the round's groups in TRL's dataset so that N processes train as one does.

    With one process, step k trains groups k·S … (k+1)·S − 1 (S groups a step). With N, TRL's data
    loader hands process r the r-th consecutive 1/N of the round (its T local steps, S/N groups each),
    and the global step k is the union of every process's k-th local step. Listing, per process r and
    local step k, the groups k·S + r·S/N … makes global step k the same S groups as with one process.
    """
    per_step = groups // steps
    share = per_step // processes
    if groups % steps or per_step % processes:
        raise ValueError(f"{groups} groups do not split into {steps} steps over {processes} processes")
    return [k * per_step + r * share + m
            for r in range(processes) for k in range(steps) for m in range(share)]


def group_dataset(rows: pd.DataFrame, steps: int = 1, processes: int = 1):
    """TRL's train dataset: one row per stored group; its prompt is the group's key.

    In file order with one process; with several, in `rank_order` (each process then serves its own
    whole groups, and every global step trains the groups it would train in one process).
    """
    from datasets import Dataset

    groups = rows["group_index"].unique()
    order = rank_order(len(groups), steps, processes) if processes > 1 else range(len(groups))
    return Dataset.from_dict({"prompt": [_group_key(groups[i]) for i in order]})


class StoredRollouts:
    """TRL `rollout_func` that serves the stored rollouts of one round instead of generating.

    The dataset has one row per group whose prompt is the group's key. TRL 1.16 passes each prompt
    repeated num_generations times (RepeatSampler's mini-repeat; the rollout_func docstring says
    otherwise), so each run of equal keys is one stored group, served in sample order. `live` says,
    per served row, whether its group carries signal (its rewards are not all equal).
    """

    def __init__(self, rows: pd.DataFrame):
        self.groups = {_group_key(g): group for g, group in rows.groupby("group_index", sort=False)}
        self.completion_tokens = 0
        self.live: list[bool] = []

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
        self.live = [bool(g["reward"].nunique() > 1) for g in served for _ in range(len(g))]
        return {
            "prompt_ids": [ids.tolist() for ids in rows["prompt_ids"]],
            "completion_ids": completion_ids,
            "logprobs": [lp.tolist() for lp in rows["logprobs"]],
            STORED_REWARD: rows["reward"].astype(float).tolist(),
        }


def stored_reward(completions, stored_reward, **kwargs) -> list[float]:
    """The reward the scoring stage gave each completion (forwarded by TRL from rollout_func)."""
    return list(stored_reward)


def _this_process_only(values):
    """The default `global_sum` / `gather`: one process, nothing to combine."""
    return values


def split_into_steps(
    batch: dict, live: list[bool], cfg: SlowConfig, global_sum=_this_process_only
) -> tuple[list[dict], list[dict]]:
    """The round's generation batch as T step batches, with dead groups masked out of the loss.

    TRL's loss is sum(per-token loss × completion_mask × tool_mask) / (num_items_in_batch / (N·T)) on
    each of N processes, whose gradients DDP/FSDP then average (÷ N): the step's gradient is that of
    the sum over all processes' tokens / (num_items_in_batch / T). Both factors are ours to set. A
    dead row (`zero_variance_groups: drop`) gets a tool_mask of 0, so its tokens leave the policy
    term, the KL term, their metrics and the normaliser, while the attention mask is untouched. The
    aggregation (`slow.loss_aggregation`):
    - seq_mean_token_mean: a live row's tool_mask is 1/its length and num_items_in_batch is the step's
      live rows × T, so each completion's token losses are averaged and the step's loss is the mean
      over its live completions: a long completion weighs as much as a short one;
    - token_mean: tool_mask 1, num_items_in_batch the step's live tokens × T;
    - round_token_mean: tool_mask 1, num_items_in_batch the round's live tokens (TRL's own).
    The counts are over the step's rows on ALL processes: `global_sum` adds a tensor of counts over
    the processes (identity in one process), so every process divides by the same global count, the
    loss equals the one-process loss, and a step whose groups are all dead is seen as such by every
    process at once. Returns (this process's step batches, per-step global counts of live and dropped
    groups and live tokens).
    """
    import torch
    from trl.trainer.utils import split_tensor_dict

    T, G = cfg.steps_per_round, cfg.group_size
    keep = cfg.zero_variance_groups == "keep"
    completion_mask = batch["completion_mask"]
    rows = torch.tensor([True] * len(live) if keep else live, device=completion_mask.device)
    weight = rows.to(torch.float32)
    if cfg.loss_aggregation == "seq_mean_token_mean":
        weight = weight / completion_mask.sum(-1).clamp(min=1)
    batch = dict(batch, tool_mask=weight[:, None].expand_as(completion_mask).contiguous())
    steps = split_tensor_dict(batch, T)
    signalled = torch.tensor(live, device=completion_mask.device)
    local = []  # per step: live rows, live tokens, groups, groups with signal
    for step, used, signal in zip(steps, rows.chunk(T), signalled.chunk(T), strict=True):
        per_group = signal.view(-1, G)[:, 0]  # per group: do its rewards differ?
        local.append([used.sum(), (step["completion_mask"] * used[:, None]).sum(), len(per_group),
                      per_group.sum()])
    counts = global_sum(torch.tensor(local, dtype=torch.int64, device=completion_mask.device)).tolist()
    round_tokens = sum(tokens for _, tokens, _, _ in counts)
    stats = []
    for step, (used, tokens, groups, signal) in zip(steps, counts, strict=True):
        step["num_items_in_batch"] = torch.tensor({
            "seq_mean_token_mean": used * T,
            "token_mean": tokens * T,
            "round_token_mean": round_tokens,
        }[cfg.loss_aggregation], device=completion_mask.device)
        dropped = 0 if keep else groups - signal
        stats.append({"live_groups": groups - dropped, "dropped_groups": dropped,
                      "zero_variance_groups": groups - signal, "live_tokens": tokens})
    return steps, stats


def _pooled(values, mask, gather) -> tuple[float, float, float, float]:
    """(count, sum, min, max) of values[mask] over every process (`gather` stacks each process's row)."""
    import torch

    picked = values[mask].double()
    empty = picked.numel() == 0
    local = torch.stack([torch.tensor(float(picked.numel()), dtype=torch.float64, device=values.device),
                         picked.sum(),
                         picked.min() if not empty else picked.new_tensor(float("inf")),
                         picked.max() if not empty else picked.new_tensor(float("-inf"))])
    rows = gather(local[None]).view(-1, 4)
    return rows[:, 0].sum().item(), rows[:, 1].sum().item(), rows[:, 2].min().item(), rows[:, 3].max().item()


def with_importance_weights(
    batch: dict, old_logps, cap: float, gather=_this_process_only
) -> tuple[dict, dict[str, float]]:
    """Fold the truncated rollout importance weight w = min(exp(old − sampling), cap) into the advantages.

    TRL applies this correction only when it runs vLLM itself (`use_vllm`), multiplying the policy
    term of each token's loss by w before the KL term is added; our rollouts come from a stored file,
    so it is done here, the same way: the CISPO policy term is −sg(min(ρ, ε_high))·A·log π, so w·A per
    token (TRL takes (B, T) advantages) weights exactly that term and leaves β·KL alone. A token with
    no stored log-prob (NaN) gets w = 1. The metrics are over every process's tokens.
    """
    import torch

    mask = batch["completion_mask"].bool()
    weight = torch.exp(old_logps - batch["sampling_per_token_logps"]).nan_to_num(1.0).clamp(max=cap)
    weight = torch.where(mask, weight, torch.ones_like(weight))
    out = dict(batch, advantages=batch["advantages"][:, None] * weight)
    count, total, low, _ = _pooled(weight, mask, gather)
    capped, _, _, _ = _pooled(weight, mask & (weight >= cap), gather)
    return out, {"sampling/importance_weight/mean": total / count,
                 "sampling/importance_weight/min": low,
                 "sampling/importance_weight/capped_fraction": capped / count}


def sampling_logp_gap(batch: dict, gather=_this_process_only) -> dict[str, float]:
    """|stored sampling log-prob − the trainer's old log-prob| over completion tokens (of every process).

    Near 0 when the rollouts were sampled from the policy the trainer starts from, with the
    distribution it scores (temperature τ, full vocabulary); large when they were not (e.g. another
    temperature or a truncated sampler), which would make the CISPO ratio silently off-policy.
    Needs TRL's old log-probs, which it computes when T > 1.
    """
    if "old_per_token_logps" not in batch or "sampling_per_token_logps" not in batch:
        return {}
    gap = (batch["old_per_token_logps"] - batch["sampling_per_token_logps"]).abs()
    count, total, _, high = _pooled(gap, batch["completion_mask"].bool(), gather)
    return {"sampling/sampling_logp_difference/mean": total / count,
            "sampling/sampling_logp_difference/max": high}


def reduce_gradients_in_float32(fsdp_plugin) -> None:
    """FSDP in bf16 computes in bf16 but reduces the gradients over the processes in float32.

    accelerate gives FSDP the policy (param, reduce) = (bf16, bf16) for mixed precision bf16, so
    the gradients would be averaged in bf16, where one process keeps float32 gradients on its float32
    master weights: "the same training as in one process" needs float32 reduction (verl's choice too).
    """
    import dataclasses

    import torch

    policy = fsdp_plugin.mixed_precision_policy
    if policy is not None and policy.reduce_dtype != torch.float32:
        fsdp_plugin.mixed_precision_policy = dataclasses.replace(policy, reduce_dtype=torch.float32)


@functools.cache
def _trainer_class():
    """The trainer subclass and step logger (built on first use: importing trl takes seconds)."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    class StoredRolloutTrainer(GRPOTrainer):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
            if plugin is not None:
                reduce_gradients_in_float32(plugin)

        def _prepare_inputs(self, generation_batch):
            if isinstance(generation_batch, dict):  # a step batch already (see training_step)
                return generation_batch
            if not self.model.training:
                return super()._prepare_inputs(generation_batch)
            return self._step_batch(generation_batch)

        def _step_batch(self, generation_batch):
            """TRL's buffering of one generation over T steps, without its row shuffle, dead groups masked.

            TRL permutes the round's rows before splitting them over the T steps; keeping file order
            makes step k train on whole groups k·B/G … and the audit order equal the file order.
            Advantages are computed over the whole generation before the split either way.
            """
            T = self.args.steps_per_generation
            step = self._step % T
            if step == 0 or self._buffered_inputs is None:
                batch = self._generate_and_score_completions(generation_batch)
                served = self._global_sum(torch.tensor(self.rollout_func.completion_tokens,
                                                       device=self.accelerator.device))
                _check_loss_mask(batch, int(served))
                for name, value in sampling_logp_gap(batch, self.accelerator.gather).items():
                    self._metrics["train"][name].append(value)
                if self.fst_importance_correction:
                    batch, weights = with_importance_weights(
                        batch, self._old_logps(batch), self.fst_config.importance_cap, self.accelerator.gather
                    )
                    for name, value in weights.items():
                        self._metrics["train"][name].append(value)
                self._buffered_inputs, self._step_stats = split_into_steps(
                    batch, self.rollout_func.live, self.fst_config, self._global_sum
                )
            return self._buffered_inputs[step]

        def _global_sum(self, counts):
            """counts summed over the processes (all of them call this at the same point)."""
            if self.accelerator.num_processes == 1:
                return counts
            return self.accelerator.reduce(counts.clone(), reduction="sum")

        def _old_logps(self, batch):
            """log π_θc of the completion tokens: TRL's own when it computed them (T > 1), else now."""
            if batch.get("old_per_token_logps") is not None:
                return batch["old_per_token_logps"]
            ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
            mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            with torch.no_grad():
                width, batch_size = batch["completion_ids"].size(1), self.args.per_device_train_batch_size
                return self._get_per_token_logps_and_entropies(self.model, ids, mask, width, batch_size)[0]

        def training_step(self, model, inputs, num_items_in_batch):
            """A step whose groups are all dropped takes no optimiser step.

            No backward pass leaves every gradient None, so AdamW skips every parameter: the weights
            and the optimiser's moments stay as they were (a zero loss would still move the weights
            through Adam's momentum). The learning-rate schedule advances: the step is counted. The
            counts are over all processes, so they all skip the same steps together (none waits in a
            gradient all-reduce that another skips); a process whose own rows of a live step are all
            dead still runs its forward and backward pass, with a zero loss.
            """
            model.train()  # as Trainer.training_step does before it prepares the inputs
            inputs = self._step_batch(inputs)  # the step's batch: its counts decide the skip
            stats = self._step_stats[self._step % self.args.steps_per_generation]
            for name, value in stats.items():
                self._metrics["train"][f"groups/{name}"].append(float(value))
            skipped = stats["live_tokens"] == 0
            self._metrics["train"]["skipped_step"].append(float(skipped))
            if skipped:
                self._step += 1  # GRPOTrainer's own counter, which picks the buffered step
                return torch.zeros((), device=self.accelerator.device)
            return super().training_step(model, inputs, num_items_in_batch)

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


def slow_runtime(cfg: SlowConfig) -> Runtime:
    """The device and compute dtype of this machine for the slow stage (it never generates)."""
    return resolve(cfg.device, cfg.dtype, "transformers", where="slow stage")


def weights_dtype(runtime: Runtime, lora: bool) -> str:
    """The dtype the trained weights are loaded in.

    Full fine-tuning in bf16 keeps float32 master weights and computes under bf16 autocast (TRL's
    `bf16=True`): AdamW updates on bf16 weights would round small steps away. LoRA trains float32
    adapters (peft's default) on a frozen base kept in the compute dtype.
    """
    return "float32" if runtime.dtype == "bfloat16" and not lora else runtime.dtype


def _load_model(policy_in: Path, base_model_dir: Path, cfg: SlowConfig, runtime: Runtime, reference: Path):
    """(model, peft_config for TRL or None). A LoRA policy continues its adapter; round 0 gets a new one.
    `reference`: the run's starting weights, the KL reference of `slow.kl_reference: base`."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, weights_dtype(runtime, cfg.lora.enabled))
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
    if cfg.beta and cfg.kl_reference == "base":
        # TRL builds a full fine-tune's KL reference from the folder in config._name_or_path (the
        # folder the policy was loaded from, θ_c): point it at the run's starting weights instead.
        model.config._name_or_path = str(reference)
    return model, cfg.lora.to_peft() if cfg.lora.enabled else None


def lora_model(model) -> bool:
    return hasattr(model, "peft_config")


def _kl_reference_to_start(model, cfg: SlowConfig, reference: Path | None) -> None:
    """LoRA: the KL reference becomes the run's starting weights, `reference` (None: the base model).

    TRL adds `ref` (a frozen copy of the continued adapter, θ_c) whenever it is given a PeftModel, and
    computes the reference under `ref` if there is one, else with adapters disabled (the base). So: no
    `ref` for a run that started from the base; `ref` loaded from the starting adapter for a run that
    started from one (a plasticity run from a phase-A LoRA checkpoint).
    """
    if cfg.kl_reference != "base" or not lora_model(model):
        return
    if _REF_ADAPTER in model.peft_config:
        model.delete_adapter(_REF_ADAPTER)
    if cfg.beta and reference is not None:
        model.load_adapter(str(reference), adapter_name=_REF_ADAPTER, is_trainable=False)
        model.set_adapter("default")


def process_count() -> int:
    """Processes this stage runs in: WORLD_SIZE, set by `accelerate launch` (torchrun); else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_mismatch(gpus: int, processes: int) -> str | None:
    """Why `processes` processes cannot run a stage set up for slow.gpus = `gpus` (None: they can)."""
    if processes == gpus:
        return None
    how = (f"launch it as `accelerate launch --config_file config/accelerate/<fsdp|ddp>.yaml "
           f"--num_processes {gpus} -m fst slow ...` (the workflow does)" if gpus > 1
           else "launch it without accelerate/torchrun, or set slow.gpus to the number of processes")
    return f"slow.gpus is {gpus} but this stage runs in {processes} process(es): {how}"


def check_processes(cfg: SlowConfig, processes: int) -> None:
    """The stage must run in slow.gpus processes, each with whole groups of every step."""
    mismatch = process_mismatch(cfg.gpus, processes)
    if mismatch:
        raise ValueError(mismatch)
    if cfg.batch_size % (processes * cfg.group_size):
        raise ValueError(
            f"slow.batch_size ({cfg.batch_size}) must be a multiple of slow.gpus × rollout.group_size "
            f"({processes} × {cfg.group_size}): each process trains whole groups of every step"
        )


def grpo_args(cfg: SlowConfig, state_dir: Path, round_index: int, processes: int = 1):
    """The stage's GRPOConfig: every choice of the method set here, checkpoints in state_dir.

    With N processes each trains batch_size / N completions a step (whole groups), and the
    gradients are averaged over processes: the step is one step on batch_size completions.
    """
    from trl import GRPOConfig

    runtime = slow_runtime(cfg)
    T = cfg.steps_per_round
    return GRPOConfig(
        output_dir=str(state_dir),
        # The method's choices, all explicit (TRL's defaults would be dapo, ε_high = ε = 0.2, ...).
        loss_type="cispo",  # -sg(min(ρ, ε_high))·A·log π per token, token-level aggregation
        epsilon_high=cfg.epsilon_high,  # CISPO's truncation of the importance ratio
        importance_sampling_level="token",
        scale_rewards=cfg.scale_rewards,  # "group": A = (r − mean_g) / (std_g + 1e-4); "none": r − mean_g
        multi_objective_aggregation="sum_then_normalize",  # one reward function: A from the reward
        beta=cfg.beta,
        use_bias_correction_kl=False,  # k3 estimator of KL(π_θ ‖ π_ref), as in verl
        sync_ref_model=False,  # the reference never moves during a run
        num_iterations=1,
        mask_truncated_completions=False,  # truncated replies keep their (scored) tokens
        top_entropy_quantile=1.0,  # every completion token is a training target
        off_policy_mask_threshold=None,
        entropy_coef=0.0,
        disable_dropout=False,  # LoRA dropout as configured (0 by default)
        temperature=cfg.temperature,  # log π at the rollouts' sampling temperature τ
        max_completion_length=cfg.max_completion_length,
        num_generations=cfg.group_size,
        per_device_train_batch_size=cfg.batch_size // processes,
        gradient_accumulation_steps=1,
        steps_per_generation=T,  # one generation = the whole round; old log-probs from θ_c
        shuffle_dataset=False,
        max_steps=(round_index + 1) * T,
        ignore_data_skip=True,
        optim="adamw_torch",
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant_with_warmup",  # independent of the number of rounds
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,  # verl's and torch's AdamW eps, explicit
        max_grad_norm=cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=T,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        use_cpu=runtime.device == "cpu",  # else the Trainer puts the model on the job's GPU
        bf16=runtime.dtype == "bfloat16",
        fp16=runtime.dtype == "float16",
        gradient_checkpointing=cfg.gradient_checkpointing,  # recompute activations: memory for time
        gradient_checkpointing_kwargs={"use_reentrant": False},  # works under DDP/FSDP and with LoRA
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
    """Each metric over the round's steps: the mean, the sum of counts, the last of running totals.

    Generation metrics appear only on the first step of a round.
    """
    keys = sorted({k for s in steps for k in s} - {"step"})
    out = {}
    for key in keys:
        counted = [s for s in steps if not (key in _UPDATE_ONLY and s.get("skipped_step"))]
        values = [s[key] for s in counted if isinstance(s.get(key), int | float)]
        if values:
            if key in _CUMULATIVE:
                out[key] = values[-1]
            else:
                out[key] = sum(values) / (1 if key in _SUMMED else len(values))
    return out


def round_counts(metrics: dict, cfg: SlowConfig) -> dict[str, int]:
    """The round's spend for provenance.

    rl_steps are the steps the round consumed, one batch of rollouts each, whether or not it updated
    the weights: the report's RL-steps axis (counting only updates would make an arm whose groups are
    more often all dead look cheaper). optimizer_steps are the updates made, without the skipped
    steps whose groups were all dropped; rollouts_trained are those of the live groups (all groups
    with `zero_variance_groups: keep`).
    """
    steps = metrics["steps"]  # TRL logs every step (logging_steps=1)
    skipped = sum(int(s.get("skipped_step", 0)) for s in steps)
    live_groups = sum(int(s.get("groups/live_groups", 0)) for s in steps if not s.get("skipped_step"))
    return {"rl_steps": len(steps), "optimizer_steps": len(steps) - skipped, "skipped_steps": skipped,
            "rollouts_trained": live_groups * cfg.group_size}


def importance_correction_on(cfg: SlowConfig, rows: pd.DataFrame) -> bool:
    """`slow.importance_correction`; auto = on exactly when the round's rollouts came from vLLM."""
    if cfg.importance_correction == "auto":
        return bool((rows["backend"] == "vllm").any())
    return cfg.importance_correction == "on"


def build_trainer(
    model, peft_config, rows: pd.DataFrame, args, cfg: SlowConfig, tokenizer, processes: int = 1,
    callbacks=(), reference_adapter: Path | None = None,
):
    """The stage's trainer on one round's stored rows: TRL's GRPOTrainer with our step batching, the
    stored rollouts and rewards served, the importance correction as configured, the KL reference the
    run's starting weights (`slow.kl_reference: base`: the base model, or `reference_adapter` for a LoRA
    run that started from an adapter), one log line per step. `args` from `grpo_args`."""
    from transformers import PrinterCallback

    trainer_cls, step_log = _trainer_class()
    with warnings.catch_warnings():
        # rollout_func is marked experimental; trl is pinned to the version this was checked against.
        warnings.filterwarnings("ignore", message="You are using 'rollout_func'")
        trainer = trainer_cls(
            model=model,
            reward_funcs=stored_reward,
            args=args,
            train_dataset=group_dataset(rows, cfg.steps_per_round, processes),
            processing_class=tokenizer,
            peft_config=peft_config,
            rollout_func=StoredRollouts(rows),
            callbacks=[step_log(), *callbacks],
        )
    trainer.fst_config = cfg
    trainer.fst_importance_correction = importance_correction_on(cfg, rows)
    _kl_reference_to_start(trainer.accelerator.unwrap_model(trainer.model), cfg, reference_adapter)
    trainer.remove_callback(PrinterCallback)  # no dict per step on stdout: StepLog writes the log line
    return trainer


def run_slow_update(
    scored_path: Path,
    policy_in: Path,
    base_model_dir: Path,
    policy_out: Path,
    state_dir: Path,
    round_index: int,
    cfg: SlowConfig,
    reference: Path | None = None,
) -> dict:
    """Train θ_c → θ_{c+1} on the round's stored rollouts; return TRL's metrics for the round.

    `reference`: the run's starting weights, its KL reference (None: the base model); a plasticity run's
    phase-A checkpoint.

    Resumes optimizer, scheduler and RNG from state_dir/checkpoint-{round_index·T} (written by the
    previous round), so a rerun of the same round starts from the same state and gives the same result.
    """
    from accelerate import PartialState

    rows = load_round(Path(scored_path), round_index, cfg)
    processes = process_count()
    check_processes(cfg, processes)
    state_dir = Path(state_dir)
    start = round_index * cfg.steps_per_round
    resume = _checkpoint(state_dir, start) if round_index > 0 else None
    if resume is not None and not resume.is_dir():
        raise FileNotFoundError(
            f"round {round_index} resumes the optimizer state from {resume}: "
            f"run round {round_index - 1} first with the same state_dir"
        )
    args = grpo_args(cfg, state_dir, round_index, processes)  # starts the process group when N > 1
    state = PartialState()
    main = state.is_main_process
    if main:
        _prune_checkpoints(state_dir, keep={start})  # a later checkpoint is stale from an earlier run
    state.wait_for_everyone()

    reference = Path(reference or base_model_dir)
    model, peft_config = _load_model(Path(policy_in), Path(base_model_dir), cfg, slow_runtime(cfg), reference)
    adapter = reference if policy_kind(reference) == "lora" else None
    trainer = build_trainer(model, peft_config, rows, args, cfg, load_tokenizer(Path(policy_in)), processes,
                            reference_adapter=adapter)
    log.info(
        "slow round %d: steps %d..%d on %d rollouts in %d process(es)",
        round_index,
        start + 1,
        start + cfg.steps_per_round,
        len(rows),
        processes,
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)

    end = trainer.state.global_step
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if _REF_ADAPTER in getattr(trained, "peft_config", {}):
        trained.delete_adapter(_REF_ADAPTER)  # save only the trained adapter
    # A LoRA policy is replicated on every process (DDP); a full one may be sharded (FSDP): gather its
    # full state dict (a collective: every process takes part), which only the main process writes.
    sharded = processes > 1 or trainer.is_fsdp_enabled
    full = trainer.accelerator.get_state_dict(trainer.model) if sharded and not lora_model(trained) else None
    if main:
        _drop_ref_adapter(_checkpoint(state_dir, end))
        save_policy(trained, Path(policy_out), Path(base_model_dir), state_dict=full, round=round_index,
                    global_step=end)
        _prune_checkpoints(state_dir, keep={start, end})
    state.wait_for_everyone()

    steps = _round_logs(trainer.state.log_history, start)
    return {**_aggregate(steps), "round": round_index, "global_step": end, "steps": steps}
