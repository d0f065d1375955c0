"""Where a model stage computes: `model.device`, `model.dtype` and `rollout.backend`, resolved on the
machine that runs the stage (a SLURM job's node, not the login node that built the DAG).

auto means: the visible GPU when torch sees one, else the CPU; bf16 on a GPU, float32 on a CPU;
vLLM when there is a GPU and vllm is installed, else transformers.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


class DeviceUnavailable(RuntimeError):
    """A setting asks for a device or engine this machine does not have; the message names the fix."""


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" | "cpu"
    dtype: str  # "bfloat16" | "float16" | "float32"
    backend: str  # "vllm" | "transformers"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def unavailable(device: str, backend: str, where: str = "config") -> list[str]:
    """What the requested settings need that this machine lacks, each with its fix (empty when fine)."""
    problems = []
    has_cuda = (device == "cuda" or backend == "vllm") and cuda_available()  # torch only when asked
    if device == "cuda" and not has_cuda:
        problems.append(
            f"{where}: model.device is 'cuda' but torch sees no CUDA GPU here; set model.device: auto "
            f"(the GPU when there is one, else the CPU) or run where a GPU is visible"
        )
    if backend == "vllm":
        if not vllm_installed():
            problems.append(
                f"{where}: rollout.backend is 'vllm' but vllm is not installed; use the GPU environment "
                f"(envs/gpu.yaml, vllm==0.31.0) or set rollout.backend: transformers (or auto)"
            )
        if device == "cpu" or not has_cuda:
            problems.append(
                f"{where}: rollout.backend is 'vllm', which needs a CUDA GPU, but "
                + ("model.device is 'cpu'" if device == "cpu" else "torch sees no CUDA GPU here")
                + "; set rollout.backend: auto or transformers"
            )
    return problems


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def missing_here(cfg: dict, source: str) -> list[str]:
    """What a validated config's model stages would lack on this machine (see `unavailable`), and the
    slow stage's GPUs (slow.gpus > 1: one process per GPU)."""
    problems = unavailable(cfg["model"]["device"], cfg["rollout"]["backend"], where=source)
    gpus = cfg["slow"]["gpus"]
    here = gpu_count() if gpus > 1 else gpus
    if here < gpus:
        problems.append(
            f"{source}: slow.gpus is {gpus} but this machine has {here} GPU(s) for the slow stage; "
            f"set slow.gpus to at most that (1 without a GPU) or run on a cluster (--profile slurm)"
        )
    return problems


def resolve(device: str, dtype: str, backend: str, where: str = "settings") -> Runtime:
    """The concrete device, dtype and generation engine for this machine; raises if one is missing."""
    problems = unavailable(device, backend, where)
    if problems:
        raise DeviceUnavailable("\n".join(problems))
    on_gpu = device == "cuda" or (device == "auto" and cuda_available())
    chosen_dtype = ("bfloat16" if on_gpu else "float32") if dtype == "auto" else dtype
    if backend == "auto":
        backend = "vllm" if on_gpu and vllm_installed() else "transformers"
    return Runtime("cuda" if on_gpu else "cpu", chosen_dtype, backend)


def release_gpu_memory() -> None:
    """Collect dropped models and return the CUDA allocator's cache (a no-op without CUDA)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe(runtime: Runtime) -> dict:
    """Provenance: what the stage ran on (device name and memory on a GPU, torch's threads on a CPU)."""
    import torch

    record = {"device": runtime.device, "dtype": runtime.dtype, "backend": runtime.backend,
              "torch": torch.__version__, "cuda": torch.version.cuda}
    if runtime.device == "cpu":  # a CPU's float sums depend on it (profiles/default/ sets it to 1)
        record["cpu_threads"] = torch.get_num_threads()
    if runtime.device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        record |= {"device_name": props.name, "device_memory_gib": round(props.total_memory / 2**30, 1),
                   "device_count": torch.cuda.device_count()}
    return record
