"""Device, dtype and engine resolution (`model.device`, `model.dtype`, `rollout.backend`)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fst import device
from fst.config import default_config
from fst.device import DeviceUnavailable, Runtime, resolve

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_auto_is_the_cpu_with_float32_and_transformers_without_a_gpu():
    assert not torch.cuda.is_available()  # the CI machine
    assert resolve("auto", "auto", "auto") == Runtime("cpu", "float32", "transformers")
    assert resolve("cpu", "bfloat16", "transformers") == Runtime("cpu", "bfloat16", "transformers")


def test_auto_is_the_gpu_in_bf16_with_vllm_when_both_are_there(monkeypatch):
    monkeypatch.setattr(device, "cuda_available", lambda: True)
    monkeypatch.setattr(device, "vllm_installed", lambda: True)
    assert resolve("auto", "auto", "auto") == Runtime("cuda", "bfloat16", "vllm")
    monkeypatch.setattr(device, "vllm_installed", lambda: False)
    assert resolve("auto", "auto", "auto") == Runtime("cuda", "bfloat16", "transformers")
    assert resolve("cpu", "auto", "auto") == Runtime("cpu", "float32", "transformers")


@pytest.mark.parametrize(
    ("dev", "backend", "names"),
    [
        ("cuda", "transformers", ["model.device is 'cuda'", "model.device: auto"]),
        ("auto", "vllm", ["rollout.backend is 'vllm'", "vllm==0.31.0", "rollout.backend: transformers"]),
        ("cpu", "vllm", ["model.device is 'cpu'"]),
    ],
)
def test_what_this_machine_lacks_is_refused_with_the_key_and_the_fix(dev, backend, names):
    with pytest.raises(DeviceUnavailable) as error:
        resolve(dev, "auto", backend, where="cfg.yaml")
    for name in names:
        assert name in str(error.value)
    assert str(error.value).startswith("cfg.yaml: ")


def _snakemake(tmp_path, config, *args):
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", str(config), "--directory", str(tmp_path),
         "--snakefile", str(REPO / "Snakefile"), *args],
        capture_output=True, text=True, cwd=REPO,
    )


def test_a_run_that_asks_for_a_gpu_here_stops_before_any_job(tmp_path):
    """A local run refuses model.device: cuda and rollout.backend: vllm on a machine without them, on
    start, before any job; the same config on a cluster (`--profile slurm`) is planned: its jobs check
    their own nodes, and a login node without a GPU must not refuse it."""
    config = tmp_path / "gpu.yaml"
    config.write_text("model: {device: cuda}\nrollout: {backend: vllm}\n")
    done = _snakemake(tmp_path, config, "--cores", "1")
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "model.device is 'cuda'" in out and "rollout.backend is 'vllm'" in out and str(config) in out
    assert not (tmp_path / "results").exists()  # no job ran
    on_cluster = _snakemake(tmp_path, config, "-n", "--profile", "slurm")
    assert on_cluster.returncode == 0, on_cluster.stderr
    assert "rollout.backend is 'vllm'" not in on_cluster.stdout + on_cluster.stderr
    slow_gpus = tmp_path / "gpus.yaml"  # valid (device auto), but this machine has no GPU to train on
    slow_gpus.write_text("slow: {gpus: 2}\n")
    done = _snakemake(tmp_path, slow_gpus, "--cores", "1")
    assert done.returncode != 0
    assert "slow.gpus is 2 but this machine has 0 GPU(s)" in done.stdout + done.stderr
    assert not (tmp_path / "results").exists()


def test_the_defaults_ask_for_auto():
    cfg = default_config()
    assert (cfg["model"]["device"], cfg["model"]["dtype"], cfg["rollout"]["backend"]) == ("auto",) * 3


def test_the_slow_stage_keeps_one_gpu_and_runs_in_slow_gpus_processes(monkeypatch):
    from fst.stages.slow import process_rank

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert process_rank(1) == 0
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "2"  # one process: no DataParallel
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")  # unset (a machine outside SLURM): torch would see all
    assert process_rank(1) == 0
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "0"
    with pytest.raises(SystemExit, match="accelerate launch .* --num_processes 2"):
        process_rank(2)  # slow.gpus: 2 started without the launcher
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert process_rank(2) == 1
    assert __import__("os").environ["CUDA_VISIBLE_DEVICES"] == "0,1"  # each process takes its LOCAL_RANK
    with pytest.raises(SystemExit, match="slow.gpus is 1 but this stage runs in 2"):
        process_rank(1)

