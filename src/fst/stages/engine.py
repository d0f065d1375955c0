"""What the model stages share: the device and engine they compute on, and the policy they sample.

`resolve_runtime` picks (and records) device, dtype and generation backend; `open_generation` gives
the backend's sampling engine on a policy, `opened` the same for one part of an evaluation stage,
sampling only what the shared sample cache lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from fst.artifacts import Provenance

log = logging.getLogger("fst")


def sampling_settings(cfg: dict):
    """The generation settings of a stage's settings JSON (rollout, evaluation, decomposition)."""
    from fst.generation import SamplingSettings

    return SamplingSettings(cfg["max_new_tokens"], cfg["temperature"], cfg["batch_size"])


def resolve_runtime(cfg: dict, prov: Provenance):
    """The stage's device, dtype and generation engine on this machine (recorded in its provenance)."""
    from fst import device

    runtime = device.resolve(cfg["device"], cfg["dtype"], cfg["backend"], where="model stage")
    prov.record["runtime"] = device.describe(runtime)
    log.info("computing on %s in %s, generation with %s", runtime.device, runtime.dtype, runtime.backend)
    return runtime


@dataclass
class Generation:
    """A stage's sampling engine on one policy: `engine(tokenizer, prompts, settings, seed)`.

    `model` is the transformers policy (None when vLLM samples); `close()` gives the GPU memory back.
    """

    model: object | None
    tokenizer: object
    engine: Callable
    close: Callable[[], None]


def open_generation(policy: str, runtime, cfg: dict, prov: Provenance) -> Generation:
    """The resolved backend's engine on `policy`.

    vLLM: an in-process engine on the policy (a LoRA adapter served on its base); transformers: the
    policy loaded on the stage's device, sampled by fst.generation.sample.
    """
    if runtime.backend != "vllm":
        from fst.device import release_gpu_memory
        from fst.generation import sample

        model, tokenizer = load_model(policy, runtime, prov)
        return Generation(model, tokenizer, partial(sample, model), release_gpu_memory)
    from fst.generation_vllm import VllmEngineSettings, open_vllm_sampler

    with prov.timed("model_load"):
        sampler = open_vllm_sampler(
            Path(policy), runtime.dtype, VllmEngineSettings(**cfg["vllm"]), cfg["max_lora_rank"]
        )
    prov.record["runtime"].setdefault("engines", {})[str(policy)] = sampler.describe()

    def engine(_tokenizer, prompts, settings, seed):
        return sampler.sample(prompts, settings, seed)

    return Generation(None, sampler.tokenizer, engine, sampler.close)


class SharedGeneration:
    """A stage part's engine on one policy that samples only what the shared sample cache lacks
    (fst.sample_cache): the backend's engine is opened at the first miss, never when every draw is
    shared. `generation` is the opened engine (None until then); `tokenizer` is the policy's."""

    def __init__(self, policy: str, runtime, cfg: dict, prov: Provenance, cache):
        from fst.policy import load_tokenizer
        from fst.sample_cache import weights_key

        self.policy, self.runtime, self.cfg, self.prov = policy, runtime, cfg, prov
        self.weights = weights_key(Path(policy))
        self.generation: Generation | None = None
        self.tokenizer = load_tokenizer(Path(policy))
        self.engine = cache.engine(self.weights, self._engine)

    def _engine(self):
        """The backend's engine, opened now if it is not open (at a first miss, or again after close())."""
        if self.generation is None:
            self.generation = open_generation(self.policy, self.runtime, self.cfg, self.prov)
        return self.generation.engine

    def close(self) -> None:
        if self.generation is not None:
            self.generation.close()
            self.generation = None


@contextmanager
def opened(policy: str, runtime, cfg: dict, prov: Provenance, cache):
    """A SharedGeneration on `policy` for one part of a stage: its engine is closed when the part is done."""
    generation = SharedGeneration(policy, runtime, cfg, prov, cache)
    try:
        yield generation
    finally:
        generation.close()


def load_model(policy: str, runtime, prov: Provenance):
    """The transformers policy and its tokenizer on the stage's device (imports and load timed)."""
    with prov.timed("imports"):
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from fst.policy import load_policy
    with prov.timed("model_load"):
        return load_policy(Path(policy), runtime.dtype, runtime.device)
