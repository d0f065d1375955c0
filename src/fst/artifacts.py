"""Reading and writing stage artifacts: atomic writes, content hashes, provenance records.

Writes go to a temporary name and are renamed into place, so a stage that is killed never leaves a
half-written file that a rerun would take for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import socket
import subprocess
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pandas as pd

from fst import warm

# A model folder carries the hash of its weights in this record, so provenance does not re-hash
# hundreds of megabytes in every stage that reads the model.
_CACHED_HASH_FILES = {"fst_model.json": "weights_sha256", "fst_policy.json": "weights_sha256"}
_TRACKED_PACKAGES = ("fst-workflow", "torch", "transformers", "trl", "peft", "gepa", "vllm", "mlflow")
# Where a stage ran: the scheduler's job and the devices it was given (absent when not set).
_JOB_VARIABLES = ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "CUDA_VISIBLE_DEVICES")


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: Path):
    return json.loads(Path(path).read_text())


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def _sha256_file(path: Path, digest=None):
    digest = digest or hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def hash_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return _sha256_file(path).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        if file.name in _CACHED_HASH_FILES or file.name.startswith("."):
            continue
        digest.update(str(file.relative_to(path)).encode())
        _sha256_file(file, digest)
    return digest.hexdigest()


def content_hash(path: Path) -> str:
    """Like hash_path, but reuses the weights hash recorded inside a model or policy folder."""
    path = Path(path)
    for record, key in _CACHED_HASH_FILES.items():
        if (path / record).is_file():
            cached = read_json(path / record).get(key)
            if cached:
                return cached
    return hash_path(path)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def job_environment() -> dict[str, str]:
    """The scheduler job and visible devices of this process, from its environment."""
    return {name: os.environ[name] for name in _JOB_VARIABLES if name in os.environ}


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Provenance:
    """Collects what a stage read, how it was configured and what it counted; written at the end."""

    def __init__(self, stage: str, inputs: dict[str, Path], config: dict, seed: int | None = None):
        self.record = {
            "stage": stage,
            "inputs": {
                name: {"path": str(p), "sha256": content_hash(p)}
                for name, p in inputs.items()
                if p is not None and Path(p).exists()
            },
            "config": config,
            "seed": seed,
            "versions": package_versions(),
            "git_commit": git_commit(),
            "host": socket.gethostname(),
            "job": job_environment(),
            # forked by the warm stage runner (torch, transformers, TRL imported before the stage began)
            "warm_runner": warm.launched_by_server,
            "started": time.time(),
            "counts": {},
            "timings_s": {},
        }
        self._t0 = time.perf_counter()

    def count(self, **counts: int) -> None:
        for key, value in counts.items():
            self.record["counts"][key] = self.record["counts"].get(key, 0) + int(value)

    @contextmanager
    def timed(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            # a part timed twice (a stage that loads several models) adds up, never overwrites
            timings = self.record["timings_s"]
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)

    def write(self, path: Path, outputs: dict[str, Path] | None = None) -> None:
        self.record["ended"] = time.time()
        self.record["wall_s"] = round(time.perf_counter() - self._t0, 3)
        # The process's peak RSS: Snakemake's benchmark cannot see a stage forked by the warm runner.
        self.record["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        self.record["outputs"] = {
            name: {"path": str(p), "sha256": content_hash(p)} for name, p in (outputs or {}).items()
        }
        write_json(self.record, path)
