"""The environments' pip parts against a real index (conda itself is not needed for what fails there).

- envs/cpu.yaml's pip list installs in a fresh venv, and envs/cpu.post-deploy.sh then adds the
  packaged model and the project to it, as Snakemake does in the new conda environment.
- envs/gpu.yaml's pip list (PyPI's CUDA torch, vllm) resolves together for Linux x86_64, CPython 3.11,
  without installing anything: uv reads only the wheels' metadata (pip's dry run on an index without
  PEP 658 metadata downloads several GB of wheels, or with fast-deps takes 45-90 s here).

Both need PyPI and skip, saying so, only where it cannot be reached. Where the PyPI index works but
the PyTorch CPU index that envs/cpu.yaml names does not, the CPU test installs without that line, with
a warning, if pip's own configuration here offers the CPU build of torch, and skips otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import warnings
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PYPI = "https://pypi.org/simple"
# envs/gpu.yaml's header: Linux x86_64 with glibc >= 2.31 (vllm 0.31's llguidance 1.7 wheels).
GPU_PLATFORM = "x86_64-manylinux_2_31"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

pytestmark = pytest.mark.network


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=15):
            return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="module", autouse=True)
def pypi():
    if not _reachable(f"{PYPI}/pip/"):
        pytest.skip(f"PyPI ({PYPI}) cannot be reached from here")


def _pip_lines(env: str) -> list[str]:
    deps = yaml.safe_load((REPO / "envs" / env).read_text())["dependencies"]
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    return pip


def _clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without what would make a child see this checkout or another venv."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    return env | extra


def _run(args: list, what: str, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done


def test_cpu_env_installs_in_a_fresh_venv_and_post_deploy_adds_model_and_project(tmp_path):
    lines = _pip_lines("cpu.yaml")
    venv = tmp_path / "env"
    python = venv / "bin" / "python"
    env = _clean_env(PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    _run([sys.executable, "-m", "venv", venv], "python -m venv")
    # conda-forge's pip is a current one; the venv's bundled pip is older (and 2-3x slower to resolve).
    _run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], "upgrading pip", env=env)

    (torch,) = [line for line in lines if line.startswith("torch==")]
    for line in [line for line in lines if line.startswith("--extra-index-url")]:
        url = line.split()[1].rstrip("/")
        if _reachable(f"{url}/torch/"):
            continue
        # Without the CPU index, `torch==X` from PyPI is the CUDA build (GBs): go on only where pip's
        # configuration here has the CPU build (a local wheel), which pip then prefers (X+cpu > X).
        dry_run = [python, "-m", "pip", "install", "-q", "--dry-run", "--no-deps", "--ignore-installed"]
        offered = subprocess.run([*map(str, dry_run), f"{torch}+cpu"], capture_output=True, env=env)
        if offered.returncode != 0:
            pytest.skip(f"{url} cannot be reached and pip's configuration offers no CPU build of {torch}")
        warnings.warn(
            f"{url} cannot be reached: installing without '{line}' (the CPU torch from pip's configuration)",
            stacklevel=1,
        )
        lines = [other for other in lines if other != line]

    requirements = tmp_path / "requirements.txt"  # conda hands the pip list to pip as such a file
    requirements.write_text("\n".join(lines) + "\n")
    # --no-compile: byte-compiling ~1.5 GB of packages is slow and tells nothing about installability.
    install = [python, "-m", "pip", "install", "-q", "--no-compile", "-r", requirements]
    _run(install, "pip install of envs/cpu.yaml's pip list", env=env, cwd=tmp_path)

    # As Snakemake does: the env's bin first on PATH, the working directory not the checkout.
    script = REPO / "envs" / "cpu.post-deploy.sh"
    _run(["bash", script], "envs/cpu.post-deploy.sh", env=env | {"FST_REPO": str(REPO)}, cwd=tmp_path)

    probe = (
        "import importlib.metadata as m, json, fst\n"
        "from fst.model import packaged_smollm2_dir\n"
        "print(json.dumps({'fst': fst.__file__, 'torch': m.version('torch'),"
        " 'model': str(packaged_smollm2_dir())}))"
    )
    found = json.loads(_run([python, "-c", probe], "importing fst", env=env, cwd=tmp_path).stdout)
    assert Path(found["fst"]).resolve().is_relative_to(REPO / "src"), found  # editable, from the checkout
    assert found["torch"] == torch.split("==")[1] + "+cpu", found
    assert (Path(found["model"]) / SMOLLM2_GGUF).is_file(), found
    cli = _run([venv / "bin" / "fst", "--help"], "the fst CLI", env=env, cwd=tmp_path)
    assert "usage" in cli.stdout.lower()
    shutil.rmtree(venv)  # 1.5 GB; pytest keeps the tmp_path of its last runs (kept on failure)


def _uv() -> str:
    try:
        from uv import find_uv_bin
    except ImportError:
        found = shutil.which("uv")
        assert found, "uv (requirements-dev.txt) is not installed"
        return found
    return find_uv_bin()


def test_gpu_env_requirements_resolve_together(tmp_path):
    lines = _pip_lines("gpu.yaml")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(lines) + "\n")
    env = {k: v for k, v in _clean_env().items() if not k.startswith(("UV_", "PIP_"))}
    compile_ = [_uv(), "pip", "compile", "--no-config", "--no-cache", "--system-certs", "--quiet"]
    compile_ += ["--index-url", PYPI, "--python-version", "3.11", "--python-platform", GPU_PLATFORM]
    compile_ += ["--only-binary", ":all:", "--no-annotate", "--no-header", requirements]
    done = _run(compile_, "resolving envs/gpu.yaml's pip list", env=env, cwd=tmp_path)
    resolved = dict(
        re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line).groups()
        for line in done.stdout.splitlines()
        if line and not line.startswith("#")
    )
    resolved = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in resolved.items()}
    pins = [line for line in lines if "==" in line and not line.startswith("-")]
    assert {"torch", "vllm", "transformers"} <= {pin.split("==")[0] for pin in pins}
    for pin in pins:
        name, version = pin.split("==")
        assert resolved.get(name) == version, f"{pin} resolved to {resolved.get(name)}"
