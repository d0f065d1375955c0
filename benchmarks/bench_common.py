"""What the model benchmarks share: the model they load and the peak-memory reading."""

from __future__ import annotations

import resource
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "tests" / ".cache" / "smollm2"


def base_model(arg: str | None) -> Path:
    """`arg`, or the packaged SmolLM2 prepared once into the tests' cache."""
    if arg:
        return Path(arg)
    from fst.model import MODEL_RECORD, PACKAGED_SMOLLM2, prepare_base_model

    if not (DEFAULT_MODEL / MODEL_RECORD).is_file():
        prepare_base_model(PACKAGED_SMOLLM2, DEFAULT_MODEL)
    return DEFAULT_MODEL


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
