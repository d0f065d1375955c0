"""Runs slow rounds in each process of `accelerate launch` (tests/unit/test_slow_distributed.py).

argv[1]: a JSON list of rounds, each the arguments of fst.slow.run_slow_update with its settings as
a dict; the main process writes each round's metrics to its "metrics" path, and every process writes
what it was (rank, processes, distributed type) and which stored groups it served to
rank<r>.json beside the list.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from fst import artifacts, slow


def _cpu_map_location() -> None:
    """A resumed round in several CPU processes: the Trainer loads the optimizer state with
    map_location=args.device, which is torch.device("cpu", 0) there, a location torch.load cannot
    restore to (on GPUs it is cuda:<rank>, which it can). Map it to plain "cpu"."""
    load = torch.load

    def cpu_load(*args, map_location=None, **kwargs):
        if isinstance(map_location, torch.device) and map_location.type == "cpu":
            map_location = "cpu"
        return load(*args, map_location=map_location, **kwargs)

    torch.load = cpu_load


def main(spec: str) -> None:
    torch.set_num_threads(1)  # tiny matrices: threads only cost time on a shared machine
    _cpu_map_location()
    served: list[list[str]] = []
    serve = slow.StoredRollouts.__call__

    def recording(self, prompts, trainer):
        served[-1].extend(dict.fromkeys(prompts))  # each group's key once, in the order asked
        return serve(self, prompts, trainer)

    slow.StoredRollouts.__call__ = recording
    for job in json.loads(Path(spec).read_text()):
        served.append([])
        metrics = slow.run_slow_update(Path(job["scored"]), Path(job["policy_in"]), Path(job["base"]),
                                       Path(job["out"]), Path(job["state"]), job["round"],
                                       slow.SlowConfig.from_dict(job["cfg"]))
        if PartialState().is_main_process:
            artifacts.write_json(metrics, Path(job["metrics"]))
    state = PartialState()
    artifacts.write_json({"rank": state.process_index, "processes": state.num_processes,
                          "distributed_type": str(state.distributed_type), "served": served},
                         Path(spec).parent / f"rank{state.process_index}.json")


if __name__ == "__main__":
    main(sys.argv[1])
