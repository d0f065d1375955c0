"""Each stage's settings, built from the validated config (and nothing else).

The schema (workflow/schemas/config.schema.yaml) is the only place defaults live: the settings
dataclasses have no defaults of their own, and the rules pass exactly what is built here to the
stages (as JSON on their command line), so a stage can never silently fall back to a value of its own.
"""

from __future__ import annotations

import shlex
from dataclasses import asdict

from fst.generation import SamplingSettings
from fst.slow import LoraSettings, SlowConfig


def sampling(cfg: dict) -> SamplingSettings:
    """How rollouts, GEPA's metric calls and evaluation sample from the policy."""
    rollout = cfg["rollout"]
    return SamplingSettings(
        max_new_tokens=rollout["max_new_tokens"],
        temperature=rollout["temperature"],
        batch_size=rollout["batch_size"],
    )


def rollout_stage(cfg: dict) -> dict:
    """The rollout stage's settings: how it samples, where, and how many groups of which size."""
    from fst.config import problems_per_round

    return asdict(sampling(cfg)) | runtime(cfg) | engine(cfg) | {
        "group_size": cfg["rollout"]["group_size"],
        "problems": problems_per_round(cfg),
    }


def runtime(cfg: dict) -> dict:
    """Device, dtype and generation engine a model stage asks for, as configured (`auto` included).

    They resolve on the machine that runs the stage (fst.device.resolve), not here: the machine that
    builds the DAG (a cluster's login node) need not have the job's GPU.
    """
    model = cfg["model"]
    return {"device": model["device"], "dtype": model["dtype"], "backend": cfg["rollout"]["backend"]}


def engine(cfg: dict) -> dict:
    """The vLLM engine settings of the generating stages (used when the backend resolves to vllm)."""
    return {"vllm": dict(cfg["rollout"]["vllm"]), "max_lora_rank": cfg["slow"]["lora"]["r"]}


def slow(cfg: dict, seed: int) -> SlowConfig:
    """The slow stage's CISPO settings; group size, token limit and τ are the rollouts' own."""
    settings = dict(cfg["slow"])
    lora = dict(settings.pop("lora"))
    return SlowConfig(
        **settings,
        group_size=cfg["rollout"]["group_size"],
        max_completion_length=cfg["rollout"]["max_new_tokens"],
        temperature=cfg["rollout"]["temperature"],
        lora=LoraSettings(**lora | {"target_modules": tuple(lora["target_modules"])}),
        dtype=cfg["model"]["dtype"],
        device=cfg["model"]["device"],
        seed=seed,
    )


def slow_strategy(cfg: dict) -> str:
    """How slow.gpus > 1 processes share the model: FSDP shards a full fine-tune, DDP replicates LoRA."""
    return "ddp" if cfg["slow"]["lora"]["enabled"] else "fsdp"


def slow_launcher(cfg: dict, accelerate_dir: str) -> str:
    """The command that starts the slow stage: `fst` with one GPU; with N, N processes of `fst`.

    `accelerate launch` (torchrun underneath) starts one process per GPU on this node with the
    shipped config of `slow_strategy` (accelerate_dir/<fsdp|ddp>.yaml); port 0 picks a free port, so
    two such jobs on one node do not collide.
    """
    gpus = cfg["slow"]["gpus"]
    if gpus == 1:
        return "fst"
    config = shlex.quote(f"{accelerate_dir}/{slow_strategy(cfg)}.yaml")
    return (f"accelerate launch --config_file {config} --num_processes {gpus} --num_machines 1 "
            "--main_process_port 0 -m fst")


def slow_resources(cfg: dict) -> dict:
    """The slow job's GPUs: all slow.gpus on one node, for ONE task (SLURM: --gpus=N --nodes=1 and no
    --ntasks-per-gpu, which would start the whole command once per GPU; accelerate starts the N
    processes inside that one task)."""
    return {"gpu": cfg["slow"]["gpus"], "nodes": 1}
