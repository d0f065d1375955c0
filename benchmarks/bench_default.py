"""The embedded default experiment end to end, timed, and where its time went per stage.

    python benchmarks/bench_default.py [--experiment NAME] [--cores 2] [--before results/<experiment>]

Runs `snakemake --cores N --config experiment=NAME` into a fresh results folder (refused if it
exists: a partial folder would time only what is left), prints the wall time against the 10-minute
target, then `stage_timing.py`'s table for the run. With `--before`, a finished run of another version
(e.g. one made from an older checkout), the per-stage table puts both side by side. Writes
benchmarks/results/default_run.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stage_timing import ROOT, find_records, job_timing, summarize

RESULTS = ROOT / "benchmarks" / "results" / "default_run.json"
TARGET_S = 600


def stages_of(experiment: Path) -> dict:
    jobs = [j for j in (job_timing(p, experiment) for p in find_records(experiment)) if j]
    return summarize(jobs)


def _share(kind: dict) -> str:
    return "-" if kind["share_startup"] is None else f"{100 * kind['share_startup']:.0f}%"


def table(after: dict, before: dict | None) -> list[str]:
    header = "stage               n   total s  mean s  start-up"
    lines = [header + ("   | before: n total s mean s start-up" if before else "")]
    order = sorted(set(after) | set(before or {}), key=lambda s: -after.get(s, {}).get("total_wall_s", 0))
    for stage in order:
        a = after.get(stage)
        numbers = (f"{a['count']:>2} {a['total_wall_s']:>8.1f} {a['mean_wall_s']:>7.1f} {_share(a):>9}" if a
                   else f"{'-':>2} {'-':>8} {'-':>7} {'-':>9}")
        row = f"{stage:<19} {numbers}"
        if before:
            b = before.get(stage)
            row += (f"   | {b['count']:>2} {b['total_wall_s']:>8.1f} {b['mean_wall_s']:>6.1f} {_share(b):>8}"
                    if b else "   |  -")
        lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="bench-default")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--before", type=Path, help="a finished run's results folder to compare with")
    opts = parser.parse_args()
    folder = ROOT / "results" / opts.experiment
    if folder.exists():
        raise SystemExit(f"{folder} exists: remove it or name another --experiment (a run must start fresh)")
    command = ["snakemake", "--cores", str(opts.cores), "--config", f"experiment={opts.experiment}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=dict(os.environ))
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(done.returncode)
    after = stages_of(folder)
    before = stages_of(opts.before.resolve()) if opts.before else None
    print("\n".join(table(after, before)))
    print(f"\ndefault experiment, {opts.cores} cores: {wall:.0f} s end to end "
          f"({wall / 60:.1f} min; target {TARGET_S // 60} min, ratio {wall / TARGET_S:.2f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"experiment": opts.experiment, "cores": opts.cores, "wall_s": wall,
                                   "target_s": TARGET_S, "stages": after, "before": before}, indent=2) + "\n")


if __name__ == "__main__":
    main()
