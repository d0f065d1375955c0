"""Runs slow rounds in each process of `accelerate launch` (tests/unit/test_slow_distributed.py).

argv[1]: a JSON list of rounds, each the arguments of fst.slow.run_slow_update with its settings as
a dict; the main process writes each round's metrics to its "metrics" path.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from fst import artifacts
from fst.slow import SlowConfig, run_slow_update


def main(spec: str) -> None:
    torch.set_num_threads(1)  # tiny matrices: threads only cost time on a shared machine
    for job in json.loads(Path(spec).read_text()):
        metrics = run_slow_update(Path(job["scored"]), Path(job["policy_in"]), Path(job["base"]),
                                  Path(job["out"]), Path(job["state"]), job["round"],
                                  SlowConfig.from_dict(job["cfg"]))
        from accelerate import PartialState

        if PartialState().is_main_process:
            artifacts.write_json(metrics, Path(job["metrics"]))


if __name__ == "__main__":
    main(sys.argv[1])
