"""The slow stage: CISPO steps on the round's scored rollouts, in one process per GPU."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fst import artifacts
from fst.artifacts import Provenance

log = logging.getLogger("fst")


def process_rank(gpus: int) -> int:
    """This process's rank; checks that the stage runs in slow.gpus processes, before CUDA starts.

    slow.gpus = 1: one process. Given several GPUs, a single-process Trainer would wrap the model in
    DataParallel, which our per-step loss normaliser does not account for: keep the first GPU.
    slow.gpus = N > 1: `accelerate launch --num_processes N` (the workflow's command) started N
    processes, one per GPU (WORLD_SIZE, RANK and LOCAL_RANK are set by its launcher).
    """
    from fst.slow import process_count, process_mismatch  # no torch yet: CUDA must not start here

    mismatch = process_mismatch(gpus, process_count())
    if mismatch:
        raise SystemExit(f"fst slow: {mismatch}")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if gpus == 1 and visible is None:  # unset: torch would see every GPU of the machine
        os.environ["CUDA_VISIBLE_DEVICES"] = "0"
    elif gpus == 1 and "," in visible:
        log.warning("slow stage: %s GPUs visible, training on the first only", visible.count(",") + 1)
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[0]
    return int(os.environ.get("RANK", "0"))


def cmd_slow(args) -> None:
    """Slow stage: T CISPO steps (TRL) on the round's stored, scored rollouts."""
    cfg = json.loads(args.settings)
    rank = process_rank(cfg["gpus"])
    inputs = {"scored": args.scored, "policy_in": args.policy_in, "base_model": args.base_model}
    if Path(args.reference).resolve() != Path(args.base_model).resolve():  # a plasticity run's start
        inputs["kl_reference"] = args.reference
    # only the first process writes the provenance: the others skip hashing the inputs
    prov = Provenance("slow", inputs if rank == 0 else {}, cfg, seed=cfg.get("seed"))
    with prov.timed("imports"):
        import peft  # noqa: F401
        import torch
        import trl  # noqa: F401

        from fst.device import describe
        from fst.slow import SlowConfig, round_counts, run_slow_update, slow_runtime
    settings = SlowConfig.from_dict(cfg)
    runtime = slow_runtime(settings)
    visible = torch.cuda.device_count() if runtime.device == "cuda" else 0
    if settings.gpus > 1 and visible < settings.gpus:
        raise SystemExit(
            f"fst slow: slow.gpus is {settings.gpus} but this process computes on {runtime.device} and sees "
            f"{visible} GPU(s): the slow stage runs one process per GPU, on GPUs only. Set slow.gpus to at "
            f"most the GPUs a job gets (1 on a CPU), or run where the job sees {settings.gpus} GPUs."
        )
    if rank == 0:  # describe() touches the current GPU: in another process it would open a context on GPU 0
        prov.record["runtime"] = describe(runtime) | {"processes": settings.gpus}
    with prov.timed("train"):
        metrics = run_slow_update(
            Path(args.scored),
            Path(args.policy_in),
            Path(args.base_model),
            Path(args.out),
            Path(args.state_dir),
            args.round,
            settings,
            Path(args.reference),
        )
    if rank != 0:  # the first process writes the round's files; the others only trained
        return
    artifacts.write_json(metrics, args.metrics)
    prov.count(**round_counts(metrics, settings))
    prov.record["timings_s"]["process_start"] = args.process_start
    prov.write(args.provenance, {"policy": args.out, "metrics": args.metrics})
