"""Evaluation samples and KL sums keyed by content, computed once and shared between the stages that
would otherwise compute them again.

The evaluation stages draw the same samples more than once: every arm's evaluation before training
samples the base model with the seed prompt; arm gepa's out-of-domain problems (no prompt, frozen base
weights) are the same every round; the channel decomposition's cells are the evaluation's samples of
the base and the final round, and post-hoc GEPA's seed-prompt context is arm rl's final evaluation.
A draw is a pure function of the weights, the prompt token ids, the sampling settings, the seed and the
runtime (fst.generation.sample seeds once per call; a vLLM sampler seeds every request), so a stage
asks here first and samples only what no stage has drawn yet.

Keys: sha256 over the weights (the policy's and its base model's content hashes), the prompts' token
ids, the settings, the seed, and the runtime (device and its name, dtype, backend and vLLM engine
settings, CPU model and threads, package versions, the fst source itself): anything that could
change a number makes another key. Each
entry is a Parquet file and a JSON record saying which stage computed it; a stage's provenance lists
every entry it reused and where it came from. Written by hand: Snakemake's between-workflow cache
keys whole jobs by their rules' code and inputs, and these jobs differ while parts of their work do
not.

Exactness: with transformers a reused draw equals a fresh one bit for bit (tested). vLLM seeds each
request, but its batching and prefix cache may move bf16 sums slightly between calls, so there a reused
draw is one a fresh run could have made, not always the very same bits. Jobs that miss the same key at
the same moment (evaluations on two cluster nodes) both compute it: correct, but not shared.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fst import artifacts

log = logging.getLogger(__name__)


def weights_key(policy: Path) -> str:
    """The content of a policy: its own weights' hash and, for an adapter, its base model's."""
    from fst.policy import base_model_of

    own, base = artifacts.content_hash(policy), artifacts.content_hash(base_model_of(policy))
    return own if own == base else f"{own}+{base}"


def _source_hash() -> str:
    """sha256 of the fst package's source as this process imported it (a warm runner's children run
    the code the runner imported, whatever the files say later)."""
    root = Path(__file__).parent
    digest = hashlib.sha256()
    for file in sorted(root.rglob("*.py")):
        digest.update(str(file.relative_to(root)).encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


SOURCE = _source_hash()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def runtime_identity(runtime, vllm_settings: dict | None = None) -> dict:
    """What the numbers depend on besides the inputs: the device (its name, CUDA and torch versions),
    dtype and backend (and a vLLM engine's settings), the CPU and its threads (they change the sums'
    order), the packages, and the code itself (its source, edits not yet committed included)."""
    from fst.device import describe

    return {
        "runtime": describe(runtime),  # on a CPU with torch's thread count
        "vllm": vllm_settings if runtime.backend == "vllm" else None,
        "cpu": _cpu_model(),
        "versions": artifacts.package_versions(),
        "source": SOURCE,
    }


class SampleCache:
    """A folder of shared samples; `stage` is the provenance record of the stage asking."""

    def __init__(self, folder: Path | None, runtime: dict, provenance: artifacts.Provenance, stage: str):
        self.folder = Path(folder) if folder else None
        self.runtime = runtime
        self.prov = provenance
        self.stage = stage  # where this stage's provenance goes: named as the source of what it computes
        self.prov.record.setdefault("shared", {"reused": [], "computed": []})

    def key(self, kind: str, **content) -> str:
        text = json.dumps({"kind": kind, "runtime": self.runtime, **content}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> pd.DataFrame | None:
        if self.folder is None or not (self.folder / f"{key}.json").is_file():
            return None
        record = artifacts.read_json(self.folder / f"{key}.json")
        self.prov.record["shared"]["reused"].append({"key": key, "computed_by": record["computed_by"]})
        return pd.read_parquet(self.folder / f"{key}.parquet")

    def put(self, key: str, frame: pd.DataFrame) -> None:
        self.prov.record["shared"]["computed"].append(key)
        if self.folder is None:
            return
        artifacts.write_parquet(frame, self.folder / f"{key}.parquet")
        artifacts.write_json({"computed_by": self.stage}, self.folder / f"{key}.json")  # last: marks it whole

    def engine(self, weights: str, open_engine: Callable[[], Callable]) -> Callable:
        """An engine(tokenizer, prompts, settings, seed) that samples `weights` only on a miss:
        `open_engine()` gives the real engine (opening it at the first miss: never, if all are shared)."""
        from fst.generation import Completion

        def sample(tokenizer, prompts, settings, seed):
            key = self.key("samples", weights=weights, prompts=prompts, settings=vars(settings), seed=seed)
            frame = self.get(key)
            if frame is not None:
                return [Completion(row.ids.tolist(), row.logprobs.tolist(), row.finish_reason, row.text)
                        for row in frame.itertuples()]
            completions = open_engine()(tokenizer, prompts, settings, seed)
            self.put(key, pd.DataFrame([vars(c) for c in completions],
                                       columns=["ids", "logprobs", "finish_reason", "text"]))
            return completions

        return sample

    def kl_sums(self, weights: str, base: str, temperature: float, compute: Callable) -> Callable:
        """kl(samples) -> (per-completion KL sums, token counts) of `weights` against `base`, computed by
        `compute(samples)` only on a miss."""

        def kl(samples: pd.DataFrame):
            sequences = [[list(map(int, p)), list(map(int, c))]
                         for p, c in zip(samples["prompt_ids"], samples["completion_ids"], strict=True)]
            key = self.key("kl", weights=weights, base=base, temperature=temperature, sequences=sequences)
            frame = self.get(key)
            if frame is None:
                sums, counts = compute(samples)
                frame = pd.DataFrame({"sums": sums, "counts": counts})
                self.put(key, frame)
            return frame["sums"].to_numpy(), frame["counts"].to_numpy()

        return kl
