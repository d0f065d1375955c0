"""Time per GEPA cycle, split into policy rollouts and reflection, with budget use and acceptances.

Run after a workflow run: `python benchmarks/gepa_cycle.py results/<experiment>`. Reads each GEPA
round's fast_report.json and provenance/fast.json; prints a table and writes
benchmarks/results/gepa_cycle.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "results" / "gepa_cycle.json"


def cycles(experiment_dir: Path) -> list[dict]:
    rows = []
    for report_path in sorted(experiment_dir.glob("*/*/seed*/round*/fast_report.json")):
        report = json.loads(report_path.read_text())
        stats = report["stats"]
        if not stats.get("gepa_round"):
            continue
        provenance = json.loads((report_path.parent / "provenance" / "fast.json").read_text())
        point, arm, seed, round_name = report_path.parts[-5:-1]
        rows.append(
            {
                "run": f"{point}/{arm}/{seed}",
                "round": int(round_name.removeprefix("round")),
                "wall_s": provenance["wall_s"],
                "gepa_s": provenance["timings_s"].get("gepa"),
                "policy_rollout_s": stats.get("policy_rollout_seconds"),
                "reflection_s": report["reflection_usage"].get("seconds"),
                "metric_calls": stats["metric_calls"],
                "max_metric_calls": stats["max_metric_calls"],
                "rescoring_calls": stats["rescoring_calls"],
                "reflection_calls": report["reflection_usage"].get("calls"),
                "accepted": stats["proposals_accepted"],
                "rejected_unparseable": stats["proposals_rejected_unparseable"],
            }
        )
    return rows


def main() -> None:
    rows = cycles(Path(sys.argv[1] if len(sys.argv) > 1 else "results/default"))
    columns = list(rows[0]) if rows else []
    print("\t".join(columns))
    for row in rows:
        print("\t".join(str(row[c]) for c in columns))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
