"""benchmarks/gpu_check.py on the CPU with the tiny shape: every stage measured, MFU n/a, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run_check(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    done = run_check("--shapes", "tiny", "--device", "cpu", "--out", str(out))
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout, json.loads(out.read_text())


def test_every_stage_is_measured_on_cpu(tiny_run):
    stdout, result = tiny_run
    rows = {r["stage"]: r for r in result["rows"]}
    measured = ["rollout (transformers)", "slow (CISPO, full)", "evaluate (KL to base)"]
    for stage in measured:
        assert "skipped" not in rows[stage], rows[stage]
        assert rows[stage]["tokens"] > 0 and rows[stage]["tokens_per_s"] > 0
        assert rows[stage]["seconds"] > 0
        assert rows[stage]["mfu"] is None and rows[stage]["peak_gpu_gib"] is None  # no GPU, no peak FLOP/s
        assert stage in stdout
    slow = rows["slow (CISPO, full)"]
    assert slow["step_s"] > 0 and len(slow["step_times_s"]) == result["sizes"]["steps"]
    assert rows["rollout (vLLM)"]["skipped"] == "GPU only"
    assert result["peak_bf16_flops"] is None
    assert "n/a" in stdout and "MFU %" in stdout


def test_cuda_without_a_gpu_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    done = run_check("--shapes", "tiny", "--device", "cuda")
    assert done.returncode == 2
    assert "--device cuda but torch sees no CUDA device" in done.stderr
