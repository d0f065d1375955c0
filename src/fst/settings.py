"""Each stage's settings, built from the validated config (and nothing else).

The schema (workflow/schemas/config.schema.yaml) is the only place defaults live: the settings
dataclasses have no defaults of their own, and the rules pass exactly what is built here to the
stages (as JSON on their command line), so a stage can never silently fall back to a value of its own.
"""

from __future__ import annotations

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
