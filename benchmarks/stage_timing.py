"""Where a workflow run's time went, per stage kind: start-up and model loading vs the real work.

    python benchmarks/stage_timing.py results/<experiment> [--out FILE]

Reads every stage's provenance record under the experiment folder (provenance*.json, or any .json in
a folder named provenance) and the Snakemake benchmark TSV of the same job where there is one:
`<dir>/benchmarks/<name>.tsv` for `<dir>/provenance/<name>.json`, `benchmark<suffix>.tsv` beside
`provenance<suffix>.json`. Per stage kind (the record's "stage") it prints how many jobs ran, their
mean wall time, the peak max_rss and how the wall time splits into

* start-up: everything of the job outside the stage's own record (Snakemake's `s` minus the record's
  wall_s: interpreter start, imports before the stage, hashing the inputs for provenance, teardown;
  process_start where there is no benchmark) + imports + model_load + base_model_load;
* work: every other timed section (generate, train, generate_and_score, model_load_and_save, ...),
  or the whole in-process time of a stage that times no sections;
* untimed: the rest of the record's wall time (writing outputs, the stage's own bookkeeping).

A job's wall time is Snakemake's `s` when its benchmark exists, else process_start + wall_s from the
record. Shares are over the summed wall time of the kind. Writes benchmarks/results/stage_timing.json.
Only reads the experiment folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "stage_timing.json"
STARTUP = ("process_start", "imports", "model_load", "base_model_load")


def find_records(experiment: Path) -> list[Path]:
    found = {
        p
        for p in experiment.rglob("*.json")
        if p.name.startswith("provenance") or p.parent.name == "provenance"
    }
    return sorted(found)


def benchmark_for(record: Path) -> Path | None:
    """The Snakemake benchmark TSV written by the job that wrote this provenance record."""
    if record.parent.name == "provenance":
        candidates = [record.parent.parent / "benchmarks" / f"{record.stem}.tsv"]
    else:
        suffix = record.stem.removeprefix("provenance")
        candidates = [
            record.parent / f"benchmark{suffix}.tsv",
            record.parent / "benchmarks" / f"{suffix.lstrip('_-')}.tsv",
        ]
    return next((c for c in candidates if c.is_file()), None)


def stage_kind(record: dict) -> str:
    """The record's stage; a fast stage that only passes the population on (arm rl, or a round
    without GEPA) is its own kind, so that it does not dilute the GEPA rounds' figures."""
    config = record.get("config") or {}
    if record["stage"] == "fast" and config.get("gepa_round") is False:
        return "fast (pass-through)"
    return record["stage"]


def _number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None  # "NA" or "-" when the job was too short for Snakemake to sample


def read_benchmark(path: Path) -> dict:
    """Mean `s` and peak `max_rss` (MB) over the TSV's rows (several with Snakemake's repeat())."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    seconds = [v for v in (_number(r.get("s")) for r in rows) if v is not None]
    rss = [v for v in (_number(r.get("max_rss")) for r in rows) if v is not None]
    return {
        "s": statistics.mean(seconds) if seconds else None,
        "max_rss_mb": max(rss) if rss else None,
        "rows": len(rows),
    }


def job_timing(record_path: Path, experiment: Path) -> dict | None:
    try:
        record = json.loads(record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or "stage" not in record:
        return None
    timings = {k: float(v) for k, v in (record.get("timings_s") or {}).items() if v is not None}
    in_process = float(record.get("wall_s") or 0.0)
    tsv = benchmark_for(record_path)
    bench = read_benchmark(tsv) if tsv else {"s": None, "max_rss_mb": None, "rows": 0}
    own_wall = timings.get("process_start", 0.0) + in_process
    wall = bench["s"] if bench["s"] is not None else own_wall
    outside = max(wall - in_process, 0.0)  # process start, imports before the stage, hashing, teardown
    inside = sum(timings.get(k, 0.0) for k in STARTUP if k != "process_start")
    startup = outside + inside
    work_keys = [k for k in timings if k not in STARTUP]
    work = sum(timings[k] for k in work_keys) if work_keys else in_process - inside
    return {
        "record": str(record_path.relative_to(experiment)),
        "benchmark": str(tsv.relative_to(experiment)) if tsv else None,
        "stage": stage_kind(record),
        "wall_s": wall,
        "benchmark_s": bench["s"],
        "record_wall_s": in_process,
        # the stage's own peak where it recorded one (a stage forked by the warm runner is not in
        # Snakemake's benchmark, which then measures only the `fst` client)
        "max_rss_mb": record.get("peak_rss_mb", bench["max_rss_mb"]),
        "startup_s": startup,
        "work_s": work,
        "untimed_s": max(wall - startup - work, 0.0),
        # Without a benchmark or process_start the interpreter start is not in the wall time at all.
        "startup_measured": bench["s"] is not None or "process_start" in timings,
        "timings_s": timings,
    }


def summarize(jobs: list[dict]) -> dict:
    kinds: dict[str, dict] = {}
    for stage in sorted({j["stage"] for j in jobs}):
        group = [j for j in jobs if j["stage"] == stage]
        total = sum(j["wall_s"] for j in group)
        rss = [j["max_rss_mb"] for j in group if j["max_rss_mb"] is not None]
        keys = sorted({k for j in group for k in j["timings_s"]})
        measured = all(j["startup_measured"] for j in group)

        def share(field: str, group=group, total=total, measured=measured) -> float | None:
            if not measured or total <= 0:
                return None
            return sum(j[field] for j in group) / total

        kinds[stage] = {
            "count": len(group),
            "mean_wall_s": total / len(group),
            "total_wall_s": total,
            "with_benchmark": sum(j["benchmark_s"] is not None for j in group),
            "peak_max_rss_mb": max(rss) if rss else None,
            "mean_startup_s": statistics.mean(j["startup_s"] for j in group),
            "mean_work_s": statistics.mean(j["work_s"] for j in group),
            "share_startup": share("startup_s"),
            "share_work": share("work_s"),
            "share_untimed": share("untimed_s"),
            "mean_timings_s": {
                k: statistics.mean(j["timings_s"][k] for j in group if k in j["timings_s"]) for k in keys
            },
        }
    return kinds


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="an experiment's results folder, e.g. results/default")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    opts = parser.parse_args()
    experiment = opts.experiment.resolve()
    if not experiment.is_dir():
        raise SystemExit(f"{opts.experiment} is not a folder")

    jobs = [j for j in (job_timing(p, experiment) for p in find_records(experiment)) if j]
    if not jobs:
        raise SystemExit(f"no provenance records under {opts.experiment}")
    matched = {j["benchmark"] for j in jobs if j["benchmark"]}
    unmatched = sorted(
        str(p.relative_to(experiment))
        for p in experiment.rglob("*.tsv")
        if (p.parent.name == "benchmarks" or p.name.startswith("benchmark"))
        and str(p.relative_to(experiment)) not in matched
    )
    kinds = summarize(jobs)
    startup = sum(j["startup_s"] for j in jobs if j["startup_measured"])
    measured_wall = sum(j["wall_s"] for j in jobs if j["startup_measured"])
    result = {
        "experiment": str(opts.experiment),
        "jobs": len(jobs),
        "total_wall_s": sum(j["wall_s"] for j in jobs),
        "share_startup_overall": startup / measured_wall if measured_wall else None,
        "startup_sections": list(STARTUP),
        "stages": kinds,
        "unmatched_benchmarks": unmatched,
        "per_job": jobs,
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(result, indent=2) + "\n")

    header = ("stage", "n", "mean wall s", "peak RSS MB", "start+load", "work", "untimed", "work sections")
    print("{:<19} {:>3} {:>11} {:>11} {:>10} {:>6} {:>8}  {}".format(*header))
    for stage, k in sorted(kinds.items(), key=lambda item: -item[1]["total_wall_s"]):
        rss = "-" if k["peak_max_rss_mb"] is None else f"{k['peak_max_rss_mb']:.0f}"
        sections = ", ".join(f"{n} {v:.1f}s" for n, v in k["mean_timings_s"].items() if n not in STARTUP)
        print(
            f"{stage:<19} {k['count']:>3} {k['mean_wall_s']:>11.2f} {rss:>11} "
            f"{_pct(k['share_startup']):>10} {_pct(k['share_work']):>6} {_pct(k['share_untimed']):>8}  "
            f"{sections}"
        )
    print(
        f"{len(jobs)} jobs, {result['total_wall_s']:.1f} s of job wall time; start-up and model loading: "
        f"{_pct(result['share_startup_overall'])} of the jobs whose start-up was measured"
    )
    print("'-': no benchmark TSV and no process_start, so start-up was not measured for that stage")
    if unmatched:
        print(f"benchmark TSVs with no provenance record: {', '.join(unmatched)}", file=sys.stderr)
    print(f"written to {opts.out}")


if __name__ == "__main__":
    main()
