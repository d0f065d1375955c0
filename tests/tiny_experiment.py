"""The tiny experiment config the whole-workflow tests run (local and through SLURM) on a tiny model.

Tests import it as `from tiny_experiment import tiny_config` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path


def tiny_config(model_dir: Path, **overrides) -> dict:
    """One arm, one seed, two rounds of a few steps; keyword arguments replace whole top-level keys."""
    config = {
        "experiment": "tiny",
        "arms": ["rl"],
        "seeds": [0],
        "rounds": 2,
        "model": {"source": str(model_dir)},
        "tasks": {"sizes": {"train": 8, "val": 4, "test": 4}},
        "rollout": {"group_size": 2, "max_new_tokens": 8, "batch_size": 8},
        "slow": {"steps_per_round": 2, "batch_size": 4, "warmup_steps": 0, "lora": {"r": 4}},
        "evaluation": {"k": 1, "ood_problems": 2},
    }
    return config | overrides
