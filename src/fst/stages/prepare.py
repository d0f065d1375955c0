"""Before the first round: the resolved configuration, the base model, the task data and Φ_0."""

from __future__ import annotations

import json
from pathlib import Path

from fst import artifacts
from fst.artifacts import Provenance


def cmd_config(args) -> None:
    """Print the resolved configuration (schema defaults under your files), each key with its meaning."""
    from fst.config import show_config

    print(show_config([Path(f) for f in args.configfile]), end="")


def cmd_prepare_model(args) -> None:
    """Base model stage: the configured source as a plain Hugging Face folder."""
    from fst.model import prepare_base_model

    prov = Provenance("prepare_model", {}, {"source": args.source, "dtype": args.dtype})
    with prov.timed("model_load_and_save"):
        record = prepare_base_model(args.source, args.out, args.dtype)
    prov.count(parameters=record["parameters"])
    prov.write(args.provenance, {"model": args.out})


def cmd_tasks(args) -> None:
    """Task stage: one family's (the user's, a published dataset's) problems split into train/val/test."""
    from fst.data import build_dataset_data, build_task_data

    sizes = json.loads(args.sizes)
    source = json.loads(args.source) if args.source else None
    # hashed into the record's inputs: the user's file, or a HoVer source's evidence (the data files of a
    # published dataset are hashed into its source record instead)
    inputs = {"data_file": args.data_file, "evidence": (source or {}).get("evidence")}
    prov = Provenance(
        "tasks",
        {name: path for name, path in inputs.items() if path},
        {"task": args.task, "seed": args.seed, "sizes": sizes, **({"source": source} if source else {})},
        seed=args.seed,
    )
    if source:
        with prov.timed("read_source"):
            frame, record, counts = build_dataset_data(args.task, args.seed, sizes, source)
        prov.record["source"] = record.as_dict()  # name, resolved revision, content hash, files, rows
        prov.count(**counts)
    else:
        frame = build_task_data(args.task, args.seed, sizes, args.data_file)
    artifacts.write_parquet(frame, args.out)
    prov.count(**{f"problems_{k}": int(v) for k, v in frame["split"].value_counts().items()})
    prov.write(args.provenance, {"data": args.out})


def cmd_seed_population(args) -> None:
    """Write Φ_0: the seed system prompt as a one-member population."""
    from fst.population import save_population, seed_population

    prov = Provenance("seed_population", {}, {"prompt": args.prompt})
    save_population(seed_population(args.prompt), args.out, 0)
    prov.write(args.provenance, {"population": args.out})
