"""The rows of a published dataset (datasets.<family> of the config): a local file or folder, or a Hugging
Face hub snapshot, read once by the data job, with what provenance needs to name the exact rows: the
source, the commit it resolved to and a hash of the files' contents.

A hub dataset is fetched with huggingface_hub's `snapshot_download` (pinned to a commit, cached) and its
files are read here, not through `datasets.load_dataset`: its JSON builder gives every column one Arrow
type and fails on files whose values change type between rows (CodeI/O's raw release: an `output` is a
list in one row and a number in the next), while a row's values are plain JSON to a family.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
HUB_TIMEOUT_S = 10  # the reachability check before any job; the download itself has huggingface_hub's


@dataclass(frozen=True)
class SourceRecord:
    """What the data job read: for provenance."""

    dataset: str  # the family's name (datasets.<dataset>)
    origin: str  # the local path, or hf://datasets/<repo id>
    revision: str | None  # the hub commit the snapshot resolved to; None for a local path
    files: list[str]  # relative to the path or snapshot, in reading order
    sha256: str  # over the files' names and contents
    rows: int

    def as_dict(self) -> dict:
        return asdict(self)


def describe(spec: dict) -> str:
    if spec.get("path"):
        return str(spec["path"])
    revision = f" at {spec['revision']}" if spec.get("revision") else ""
    return f"hub dataset {spec['hub']}{revision}"


def data_files(spec: dict, *, local_only: bool = False) -> tuple[Path, list[Path], str | None]:
    """(root, the data files to read in order, the hub commit or None). With `local_only` a hub source
    not yet in the local cache raises huggingface_hub's LocalEntryNotFoundError instead of downloading."""
    if spec.get("path"):
        root, revision = Path(spec["path"]), None
        if not root.exists():
            raise FileNotFoundError(f"{root} does not exist")
    else:
        from huggingface_hub import snapshot_download

        root = Path(
            snapshot_download(
                spec["hub"],
                repo_type="dataset",
                revision=spec.get("revision"),
                allow_patterns=spec.get("files") or [f"*{s}" for s in DATA_SUFFIXES],
                local_files_only=local_only,
            )
        )
        revision = root.name  # the cache keeps a snapshot under its commit hash
    if root.is_file():
        return root.parent, [root], revision
    pattern = spec.get("files")
    files = [
        f
        for f in sorted(root.rglob("*"))
        if f.is_file() and f.suffix in DATA_SUFFIXES and not f.name.startswith(".")
        # one matcher for a folder and a snapshot: fnmatch on the path below the root, as huggingface_hub
        # matches allow_patterns (a "*" crosses folders)
        and (not pattern or fnmatch(f.relative_to(root).as_posix(), pattern))
    ]
    if not files:
        wanted = f"matching '{pattern}'" if pattern else f"({', '.join(DATA_SUFFIXES)})"
        raise FileNotFoundError(f"{root} holds no data files {wanted}")
    return root, files, revision


def read_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(where, row) of one data file, streamed: JSON lines, a JSON array (or JSON lines named .json),
    Parquet (one record batch at a time)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield f"{path} row {number}", row
        return
    with path.open(encoding="utf-8") as lines:
        first = lines.readline()
        if path.suffix == ".json" and first.lstrip().startswith("["):
            for number, row in enumerate(json.loads(first + lines.read()), start=1):
                yield f"{path} item {number}", row
            return
        for number, line in enumerate([first], start=1):
            yield from _json_line(path, number, line)
        for number, line in enumerate(lines, start=2):
            yield from _json_line(path, number, line)


def _json_line(path: Path, number: int, line: str) -> Iterator[tuple[str, object]]:
    if not line.strip():
        return
    try:
        yield f"{path} line {number}", json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {number}: invalid JSON ({err.msg}); one object per line") from None


def first_row(path: Path) -> tuple[str, object]:
    """The first row of a data file, read without the rest."""
    return next(read_rows(path), (str(path), {}))


def missing_columns(row: object, columns: tuple[str, ...], where: str, dataset: str) -> str | None:
    """Why `row` lacks the family's columns, naming the file and the fix; None when it has them."""
    if not isinstance(row, dict):
        return f"{where}: expected an object with columns {', '.join(columns)}, got {type(row).__name__}"
    missing = [c for c in columns if c not in row]
    if not missing:
        return None
    return (
        f"{where}: column '{missing[0]}' is missing (a {dataset} row needs {', '.join(columns)}; it has "
        f"{', '.join(map(str, row)) or 'none'}). Convert the file to the dataset's own layout "
        f"(docs/paper-tasks.md) or point datasets.{dataset} at the right file."
    )


def content_hash(root: Path, files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root)).encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_rows(
    dataset: str, spec: dict, columns: tuple[str, ...]
) -> tuple[list[tuple[str, dict]], SourceRecord]:
    """Every row of the source, each checked for the family's columns, and the record of what was read."""
    root, files, revision = data_files(spec)
    rows = []
    for file in files:
        for where, row in read_rows(file):
            problem = missing_columns(row, columns, where, dataset)
            if problem:
                raise ValueError(problem)
            rows.append((where, row))
    origin = str(spec["path"]) if spec.get("path") else f"hf://datasets/{spec['hub']}"
    names = [str(f.relative_to(root)) for f in files]
    return rows, SourceRecord(dataset, origin, revision, names, content_hash(root, files), len(rows))


def cached_files(spec: dict) -> tuple[Path, list[Path], str | None] | None:
    """data_files for a local path, or for a hub source already in the local cache; None for a hub
    source that only a download would give."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return data_files(spec, local_only=True)
    except LocalEntryNotFoundError:
        return None


def first_problems(family: str, spec: dict, count: int) -> list:
    """Up to `count` problems of the first rows of a source already here (a path, or a hub snapshot in
    the cache); [] for one that only a download would give."""
    from fst.tasks import get_dataset

    found = cached_files(spec)
    problems: list = []
    for file in found[1] if found else []:
        for where, row in read_rows(file):
            problems += get_dataset(family).problems(row, where, spec)
            if len(problems) >= count:
                return problems[:count]
    return problems


def hub_unreachable(spec: dict) -> str | None:
    """Why the hub dataset (not in the local cache) cannot be reached from here; None when it can."""
    from huggingface_hub import HfApi

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set and the dataset is not in the local Hugging Face cache"
    try:
        HfApi().dataset_info(spec["hub"], revision=spec.get("revision"), timeout=HUB_TIMEOUT_S)
    except Exception as err:  # no network, DNS, proxy, 404, gated: all mean the job could not read it
        return f"the Hugging Face hub could not be reached or refused it ({type(err).__name__}: {err})"
    return None
