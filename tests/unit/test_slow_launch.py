"""How the slow stage is started with slow.gpus > 1: the command, its accelerate config, and the
SLURM request the executor plugin builds for it (one task holding all N GPUs of one node)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import yte
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string
from snakemake_executor_plugin_slurm_jobstep import Executor as JobStep
from snakemake_executor_plugin_slurm_jobstep import get_cpu_setting, get_gpu_setting, get_node_setting
from tiny_experiment import tiny_config

from fst import settings
from fst.config import default_config

REPO = Path(__file__).resolve().parents[2]
ACCELERATE = REPO / "config" / "accelerate"


def _config(gpus: int, lora: bool) -> dict:
    cfg = default_config()
    cfg["slow"]["gpus"], cfg["slow"]["lora"]["enabled"] = gpus, lora
    return cfg


def test_one_gpu_runs_fst_itself():
    assert settings.slow_launcher(_config(1, lora=True), str(ACCELERATE)) == "fst"
    assert settings.slow_launcher(_config(1, lora=False), str(ACCELERATE)) == "fst"


@pytest.mark.parametrize(("lora", "strategy", "kind"), [(False, "fsdp", "FSDP"), (True, "ddp", "MULTI_GPU")])
def test_several_gpus_run_fst_under_accelerate_with_a_shipped_config(lora, strategy, kind):
    command = settings.slow_launcher(_config(8, lora=lora), str(ACCELERATE))
    assert command == (f"accelerate launch --config_file {ACCELERATE}/{strategy}.yaml --num_processes 8 "
                       "--num_machines 1 --main_process_port 0 -m fst")
    shipped = yaml.safe_load((ACCELERATE / f"{strategy}.yaml").read_text())
    assert shipped["distributed_type"] == kind and shipped["num_machines"] == 1
    if kind == "FSDP":
        # every process loads the weights itself: TRL's KL reference model is not broadcast from rank 0
        assert shipped["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is False
        assert shipped["fsdp_config"]["fsdp_version"] == 2


class _Resources(dict):
    """Snakemake's job.resources: a mapping whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class _Job:
    """The part of a Snakemake job the SLURM plugin's sbatch and srun builders read."""

    def __init__(self, resources: dict, threads: int):
        self.resources, self.threads, self.name = _Resources(resources), threads, "slow"


def _slow_job(cfg: dict) -> _Job:
    """The slow job's resources as Snakemake assembles them: the rule's own (fst.settings.slow_resources,
    see workflow/rules/round.smk), then profiles/default/'s set-resources for slow, which win per key."""
    profile = yte.process_yaml((REPO / "profiles" / "default" / "config.yaml").read_text())
    overrides = profile["set-resources"]["slow"]
    assert not {"gpu", "gpus", "nodes", "tasks", "tasks_per_gpu"} & set(overrides)  # the rule's values stand
    # Snakemake evaluates a profile's string values as Python expressions (of attempt, ...)
    evaluated = {k: eval(v, {"attempt": 1}) if isinstance(v, str) else v for k, v in overrides.items()}
    return _Job(settings.slow_resources(cfg) | evaluated, threads=profile["set-threads"]["slow"])


def _sbatch(job: _Job) -> str:
    params = {"run_uuid": "run", "slurm_logfile": "slurm.log", "comment_str": "rule_slow", "account": "",
              "partition": "", "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job)


@pytest.mark.parametrize("gpu_model", [None, "h100"])
def test_slurm_gets_one_task_with_all_gpus_of_one_node(monkeypatch, gpu_model):
    if gpu_model:
        monkeypatch.setenv("FST_GPU_MODEL", gpu_model)
    else:
        monkeypatch.delenv("FST_GPU_MODEL", raising=False)
    job = _slow_job(_config(2, lora=False))
    sbatch = _sbatch(job).split()
    assert (f"--gpus={gpu_model}:2" if gpu_model else "--gpus=2") in sbatch
    assert "--nodes=1" in sbatch  # all GPUs on one node
    # One task: no --ntasks-per-gpu (one copy of the command per GPU) and no --ntasks > 1.
    assert not [a for a in sbatch if a.startswith(("--ntasks", "--gpus-per-task", "--tasks"))]
    assert "--mem" in sbatch and "-t" in sbatch
    # Inside the allocation the jobstep plugin starts the job as ONE srun task with those GPUs;
    # accelerate then starts the 2 processes.
    assert "srun -n1 " in inspect.getsource(JobStep.run_job)
    assert get_gpu_setting(job) == "--gpus=2" and get_node_setting(job) == "--nodes=1"
    assert get_cpu_setting(job, True).startswith("--cpus-per-task=")


def test_the_workflow_launches_the_slow_stage_with_accelerate(tmp_path, tiny_model_dir):
    """A dry run under the SLURM profile: the slow job's command is `accelerate launch ... -m fst slow`."""
    slow = {"steps_per_round": 2, "batch_size": 4, "warmup_steps": 0, "gpus": 2, "lora": {"enabled": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config(tiny_model_dir, rounds=1, slow=slow)))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--profile", str(REPO / "slurm"),
         "--configfile", "config.yaml", "-n", "-p"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (command,) = [line for line in (done.stdout + done.stderr).splitlines() if " -m fst slow " in line]
    assert command.startswith(f"Shell command: accelerate launch --config_file {ACCELERATE}/fsdp.yaml "
                              "--num_processes 2 ")
