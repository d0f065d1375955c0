"""Throughput figures (benchmarks/throughput.yaml), the device kind the hours are for, and the hours."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from fst.config import REPO

FIGURES_PATH = REPO / "benchmarks" / "throughput.yaml"


@dataclass(frozen=True)
class Figure:
    """One entry of benchmarks/throughput.yaml."""

    model: str
    device: str
    stage: str
    tokens_per_s: float
    kind: str  # measured | estimate
    source: str
    basis: str


def load_figures(path: Path = FIGURES_PATH) -> tuple[dict[str, list[str]], list[Figure]]:
    """({model: its aliases}, figures) of a throughput file."""
    data = yaml.safe_load(Path(path).read_text())
    return data["models"], [Figure(**entry) for entry in data["figures"]]


def figures_model(source: str, models: dict[str, list[str]]) -> str | None:
    """The figures' name of a model.source: itself, an alias, or a local folder of the same name."""
    for model, aliases in models.items():
        names = [model, *aliases]
        if source in names or Path(source).name.lower() in {Path(n).name.lower() for n in names}:
            return model
    return None


def choose_device(cfg: dict, model: str | None, figures: list[Figure], device: str | None) -> str:
    """`device` if given, else the first device kind with figures for the model that model.device allows
    (cpu: a cpu* kind; cuda: any other; auto: any); "cpu" or "gpu" when there is none."""
    if device:
        return device
    wanted = cfg["model"]["device"]
    kinds = list(dict.fromkeys(f.device for f in figures if f.model == model))
    kinds = [k for k in kinds if wanted == "auto" or (wanted == "cpu") == k.startswith("cpu")]
    return kinds[0] if kinds else ("cpu" if wanted == "cpu" else "gpu")


def estimate_hours(stages: dict[str, int], source: str, model: str | None, device: str,
                   figures: list[Figure]) -> dict:
    """Hours per stage (tokens / figure), their total, and a message for every stage without a figure."""
    found = {f.stage: f for f in figures if f.model == model and f.device == device}
    rows, missing = [], []
    for stage, tokens in stages.items():
        figure = found.get(stage)
        hours = tokens / figure.tokens_per_s / 3600 if figure else None
        rows.append({"stage": stage, "tokens": tokens, "hours": hours,
                     "figure": asdict(figure) if figure else None})
        if figure is None:
            missing.append(stage)
    messages = []
    if missing:
        which = "" if len(missing) == len(stages) else f" (stage {', '.join(missing)})"
        messages.append(f"no throughput figure for {source} on {device}{which}: add one to "
                        f"benchmarks/throughput.yaml")
    total = None if missing else sum(row["hours"] for row in rows)
    return {"stages": rows, "hours": total, "missing": messages}
