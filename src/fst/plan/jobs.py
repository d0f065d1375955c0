"""The job count: Snakemake's own dry run of the whole DAG, and its "Job stats:" table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fst.config import REPO


class PlanError(RuntimeError):
    """A plan step that could not be done (the dry run); the message says why."""


def dry_run_command(configfiles: list[Path], overrides: list[str] = ()) -> list[str]:
    """The whole DAG (--forceall: done jobs included), rule by rule, from the repository root."""
    command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--forceall"]
    if configfiles:
        command += ["--configfile", *(str(Path(f).resolve()) for f in configfiles)]
    if overrides:
        command += ["--config", *overrides]
    return command


def parse_job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats:" table (`job count` rows, then `total N`) as {rule: jobs, "total": N}."""
    lines = [line.strip() for line in text.splitlines()]
    if "Job stats:" not in lines:
        if any(line.startswith("Nothing to be done") for line in lines):
            return {"total": 0}
        raise PlanError("no 'Job stats:' table in Snakemake's dry-run output")
    start = lines.index("Job stats:")
    if lines[start + 1].split() != ["job", "count"]:
        raise PlanError(f"unexpected job table header in Snakemake's output: {lines[start + 1]!r}")
    counts = {}
    for line in lines[start + 3:]:
        name, count = line.split()
        counts[name] = int(count)
        if name == "total":
            break
    if counts.get("total") != sum(v for k, v in counts.items() if k != "total"):
        raise PlanError("Snakemake's job table does not add up to its total")
    return counts


def job_counts(configfiles: list[Path], overrides: list[str] = (), timeout: int = 600) -> dict:
    """{"rules": {rule: jobs}, "total": jobs, "command": ...} from `snakemake -n` on the config."""
    command = dry_run_command(configfiles, overrides)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        raise PlanError(f"snakemake dry run failed ({' '.join(command[2:])}): "
                        f"{(done.stderr or done.stdout).strip()[-2000:]}")
    counts = parse_job_stats(done.stdout)
    total = counts.pop("total")
    return {"rules": counts, "total": total, "command": " ".join(["snakemake", *command[3:]])}
