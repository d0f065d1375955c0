"""The slow stage in 2 processes trains exactly as in one (the path of slow.gpus > 1, on CPU processes).

`accelerate launch` with the shipped FSDP config starts two processes; on CPU accelerate runs them as
multi-CPU data parallelism (gloo), not FSDP, which needs GPUs. Each round is run once in this process
and once in the two, and the trained weights, every step's loss and the group counts must agree.
With 8 completions a step in groups of 4, each process holds one group of each step:
- LoRA, per-completion aggregation, importance correction of vLLM-like rollouts: in step 1 the first
  process holds only a dead group (it must still take part in the backward pass), in step 2 both hold
  a live one (each must divide by the step's live completions over both processes, not its own);
- full fine-tuning, token aggregation, gradient checkpointing: in step 1 both groups are live with
  different token counts (the global token count divides), step 2's groups are all dead (both
  processes must skip it together).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_slow import CFG, LORA, _perturbed, _scored_rows, _write

from fst.slow import _trainer_class, rank_order, run_slow_update

REPO = Path(__file__).resolve().parents[2]
# Per case: the settings, new rewards for some groups (PLAN's groups 0 and 3 are dead, 1 and 2 live),
# and whether the rollouts are marked as sampled by vLLM with other log-probs (importance correction).
CASES = {
    "lora": (CFG, {3: [1.0, 0.0, 0.0, 0.0]}, True),
    "full": (replace(CFG, lora=replace(LORA, enabled=False), learning_rate=1e-3,
                     loss_aggregation="token_mean", gradient_checkpointing=True),
             {0: [1.0, 0.0, 1.0, 0.0], 2: [0.0] * 4, 3: [0.0] * 4}, False),
}

ROUNDS = [*CASES, "lora-r1"]  # lora-r1: round 1 of the LoRA case, resumed from round 0's trainer state


def _weights(policy: Path) -> dict[str, torch.Tensor]:
    lora = policy / "adapter_model.safetensors"
    return load_file(lora if lora.is_file() else policy / "model.safetensors")


def _launch(spec: Path) -> subprocess.Popen:
    """tests/slow_worker.py in 2 processes through `accelerate launch` and the shipped FSDP config."""
    path = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", str(REPO / "config/accelerate/fsdp.yaml"), "--num_processes", "2",
               "--main_process_port", "0", str(REPO / "tests/slow_worker.py"), str(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    # its own process group: a failed test stops the launcher and both workers
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)


@pytest.fixture(scope="module")
def rounds(tiny_model_dir, tmp_path_factory, one_torch_thread):
    """Each case run in two launched processes (gpus=2) and, meanwhile, in this one (gpus=1)."""
    tmp = tmp_path_factory.mktemp("distributed")
    rows = _scored_rows(tiny_model_dir)
    jobs, scored = [], {}
    for name, (cfg, rewards, vllm) in CASES.items():
        frame = _perturbed(rows) if vllm else rows
        reward = rows["reward"].copy()
        for group, values in rewards.items():
            for sample, value in enumerate(values):
                reward[(rows["group_index"] == group) & (rows["sample_index"] == sample)] = value
        scored[name] = _write(frame.assign(reward=reward), tmp / f"{name}.parquet")
        model = str(tiny_model_dir)
        jobs.append({"scored": str(scored[name]), "policy_in": model, "base": model,
                     "out": str(tmp / f"{name}-2"), "state": str(tmp / f"{name}-state-2"), "round": 0,
                     "cfg": asdict(replace(cfg, gpus=2)), "metrics": str(tmp / f"{name}-2.json")})
    # round 1 of the LoRA case resumes round 0's trainer state (optimizer, scheduler, each process's RNG)
    resumed = _write(_perturbed(rows).assign(reward=rows["reward"]), tmp / "lora-r1.parquet", round_index=1)
    jobs.append(jobs[0] | {"scored": str(resumed), "policy_in": jobs[0]["out"], "out": str(tmp / "lora-r1-2"),
                           "round": 1, "metrics": str(tmp / "lora-r1-2.json")})
    (tmp / "spec.json").write_text(json.dumps(jobs))
    launched = _launch(tmp / "spec.json")
    try:
        single, trainers = {}, []
        trainer_cls = _trainer_class()[0]
        train = trainer_cls.train

        def recording_train(self, *args, **kwargs):
            trainers.append(self)
            return train(self, *args, **kwargs)

        for name, (cfg, _, _) in CASES.items():
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(trainer_cls, "train", recording_train)
                metrics = run_slow_update(scored[name], tiny_model_dir, tiny_model_dir, tmp / f"{name}-1",
                                          tmp / f"{name}-state-1", 0, cfg)
            single[name] = {"metrics": metrics, "trainer": trainers[-1]}
        again = run_slow_update(resumed, tmp / "lora-1", tiny_model_dir, tmp / "lora-r1-1",
                                tmp / "lora-state-1", 1, CASES["lora"][0])
        single["lora-r1"] = {"metrics": again}
        # A process that skipped a step the other trained would wait in its all-reduce forever.
        log, _ = launched.communicate(timeout=300)
    finally:
        if launched.poll() is None:
            os.killpg(launched.pid, signal.SIGKILL)
    assert launched.returncode == 0, log[-5000:]
    return {"tmp": tmp, "single": single, "log": log,
            "double": {name: json.loads((tmp / f"{name}-2.json").read_text()) for name in ROUNDS},
            "ranks": [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]}


def test_each_process_served_its_whole_groups_of_every_step(rounds):
    """Step k trains groups 2k and 2k+1 as in one process: the first process serves 0 and 2, the
    second 1 and 3 (rank_order), each group whole (StoredRollouts refuses a partial group)."""
    first, second = rounds["ranks"]
    assert (first["rank"], second["rank"], first["processes"]) == (0, 1, 2)
    assert first["distributed_type"] == "DistributedType.MULTI_CPU"  # gloo; FSDP needs GPUs
    for case in range(len(CASES)):
        assert first["served"][case] == ["group 0", "group 2"]
        assert second["served"][case] == ["group 1", "group 3"]


@pytest.mark.parametrize("name", ROUNDS)
def test_two_processes_train_the_same_weights_as_one(rounds, name, tiny_model_dir):
    one, two = _weights(rounds["tmp"] / f"{name}-1"), _weights(rounds["tmp"] / f"{name}-2")
    assert one.keys() == two.keys()
    if name == "full":
        start = _weights(tiny_model_dir)
    elif name == "lora-r1":  # round 1 starts from round 0's adapter
        start = _weights(rounds["tmp"] / "lora-1")
    else:
        start = {k: torch.zeros_like(v) for k, v in one.items()}
    moved = max((one[k] - start[k]).abs().max().item() for k in one if k in start)
    assert moved > 1e-4  # the round did train
    for key in one:
        assert torch.allclose(one[key], two[key], rtol=1e-5, atol=1e-7), key


@pytest.mark.parametrize("name", ROUNDS)
def test_two_processes_have_the_same_losses_and_counts_as_one(rounds, name):
    one, two = rounds["single"][name]["metrics"], rounds["double"][name]
    assert len(one["steps"]) == len(two["steps"]) == CFG.steps_per_round
    for a, b in zip(one["steps"], two["steps"], strict=True):
        keys = {"loss", "grad_norm", "kl", "reward", "skipped_step", "groups/live_groups",
                "groups/dropped_groups", "groups/live_tokens", "sampling/sampling_logp_difference/mean",
                "sampling/sampling_logp_difference/max", "sampling/importance_weight/mean",
                "sampling/importance_weight/min", "sampling/importance_weight/capped_fraction",
                } & set(a)  # some only on steps that train, or on the round's first step
        assert {"loss", "grad_norm", "skipped_step", "groups/live_tokens"} <= keys <= set(b)
        for key in keys:
            # float32 sums in another order: the loss is a small difference of larger terms
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
    assert two["global_step"] == one["global_step"]


def test_the_importance_correction_is_over_both_processes_tokens(rounds):
    one, two = rounds["single"]["lora"]["metrics"]["steps"][0], rounds["double"]["lora"]["steps"][0]
    assert 0 < one["sampling/importance_weight/capped_fraction"] < 1  # the weights were not all 1
    for key in ("sampling/importance_weight/mean", "sampling/importance_weight/capped_fraction"):
        assert two[key] == pytest.approx(one[key], rel=1e-6)


def test_a_step_without_live_groups_is_skipped_by_both_processes(rounds):
    assert [s["skipped_step"] for s in rounds["double"]["full"]["steps"]] == [0, 1]


def test_gradient_checkpointing_reaches_the_trainer(rounds):
    full, lora = rounds["single"]["full"]["trainer"], rounds["single"]["lora"]["trainer"]
    assert full.args.gradient_checkpointing
    assert full.accelerator.unwrap_model(full.model).is_gradient_checkpointing
    assert not lora.args.gradient_checkpointing


def test_rank_order_gives_each_process_its_share_of_every_step():
    # 8 groups, 2 steps of 4: process 0 gets groups 0,1 (step 1) and 4,5 (step 2), process 1 the rest
    assert rank_order(8, 2, 2) == [0, 1, 4, 5, 2, 3, 6, 7]
    assert rank_order(8, 2, 1) == list(range(8))
    with pytest.raises(ValueError, match="do not split"):
        rank_order(8, 2, 3)


def test_fsdp_in_bf16_reduces_gradients_in_float32():
    """accelerate's FSDP policy for bf16 averages gradients in bf16; the slow stage's trainer keeps
    bf16 compute but reduces in float32, as one process's float32 gradients are (GPU only: on CPU the
    launched FSDP config runs as DDP, so this checks the policy the trainer hands FSDP)."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    from fst.slow import reduce_gradients_in_float32

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    plugin.set_mixed_precision("bf16")  # what AcceleratorState does for the trainer's bf16=True
    assert plugin.mixed_precision_policy.reduce_dtype == torch.bfloat16
    reduce_gradients_in_float32(plugin)
    policy = plugin.mixed_precision_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert "create_accelerator_and_postprocess" in vars(_trainer_class()[0])  # the trainer applies it
