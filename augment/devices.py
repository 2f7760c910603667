"""Which device and dtype a process runs on: one GPU per worker, whatever launched it.

`resolve_device("auto")` (and plain "cuda") picks this process's own GPU from its local rank on the node:
`LOCAL_RANK` (torchrun, accelerate), else `SLURM_LOCALID` (srun with several tasks per node), else 0 (one
process per node: a Slurm array task, a plain shell). GPUs are counted as torch sees them, so
`CUDA_VISIBLE_DEVICES` (and Slurm's per-task binding, which sets it) is respected: a process that sees one
GPU uses it, whatever its local rank. A local rank beyond the visible GPUs is refused with one line rather
than silently stacking several workers on one GPU. `cuda:N` is taken as given (N checked).
"""

from __future__ import annotations

import functools
import os
import re
import time

import torch

from augment.errors import UserError
from augment.run.launcher import env_int

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


def local_rank() -> tuple[int, int | None, str | None]:
    """(local rank, processes on this node or None, the variable it came from or None)."""
    env = os.environ
    if "LOCAL_RANK" in env:
        size = env_int("LOCAL_WORLD_SIZE", minimum=1)
        rank = env_int("LOCAL_RANK", 0)
        if size is not None and rank >= size:
            raise UserError(f"$LOCAL_RANK={rank} is not in 0..{size - 1} ($LOCAL_WORLD_SIZE={size})")
        return rank, size, "LOCAL_RANK"
    if "SLURM_LOCALID" in env:  # srun: "2(x4)" or "2,1" tasks per node
        size = re.match(r"\d*", env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or "")[0]
        return env_int("SLURM_LOCALID", 0), int(size) if size else None, "SLURM_LOCALID"
    return 0, None, None


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' → this process's GPU when CUDA is available (see the module docstring), else cpu; 'cuda' →
    this process's GPU; 'cuda:N', 'cpu', 'mps' as given. UserError (one line) for what cannot work here."""
    if device in ("auto", "cuda"):
        if not torch.cuda.is_available():
            if device == "cuda":
                raise UserError("device 'cuda' asked for, but CUDA is not available here")
            return torch.device("cpu")
        return torch.device("cuda", _local_gpu())
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}") from None
    if dev.type == "cpu" and dev.index is not None:
        raise UserError(f"device {device!r}: the CPU has no index; use cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {device!r} asked for, but MPS (Apple GPUs) is not available here")
    if dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise UserError(f"device {device!r} asked for, but XPU (Intel GPUs) is not available here")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"device {device!r}: this process sees {torch.cuda.device_count()} GPU(s){_visible()}")
    return dev


def _local_gpu() -> int:
    rank, size, source = local_rank()
    count = torch.cuda.device_count()
    if count == 1 and (rank == 0 or os.environ.get("CUDA_VISIBLE_DEVICES") is not None):
        return 0  # the only GPU, or this process's own (Slurm's per-task binding sets CUDA_VISIBLE_DEVICES)
    if rank < count:
        return rank
    per_node = f" of {size}" if size else ""
    raise UserError(
        f"local rank {rank}{per_node} ({source}) but this process sees only {count} GPU(s){_visible()}: "
        "start at most one process per GPU, or give each one its GPU with --device cuda:N"
    )


def _visible() -> str:
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f" (CUDA_VISIBLE_DEVICES={cvd})" if cvd is not None else ""


def bind_device(dev: torch.device) -> None:
    """Make `dev` this process's current CUDA device, so that libraries which allocate on "the current
    device" (and `torch.cuda.mem_get_info()` without an argument) use this worker's GPU."""
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)


def describe_device(dev: torch.device) -> dict[str, object]:
    """What the manifest records about the device a worker used."""
    info: dict[str, object] = {"device": str(dev)}
    rank, _, source = local_rank()
    if source:
        info["local_rank"] = rank
        info["local_rank_from"] = source
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        info["name"] = torch.cuda.get_device_name(index)
        info["memory_gib"] = round(torch.cuda.get_device_properties(index).total_memory / 1024**3, 1)
        if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
            info["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    return info


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' → bf16 on GPUs that have it, else fp16 on cuda; fp32 on cpu, which is fast on every CPU: one
    without native bf16 (AVX2 only: no AVX-512-BF16, no AMX) runs a bf16 matrix product about 80× slower than
    fp32, one with it two to three times faster (docs/full-scale.md; `cpu_slowdown` measures it)."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


SLOW_ON_CPU = 3.0  # a half-precision dtype this many times slower than fp32 on the CPU gets a note


@functools.cache
def cpu_slowdown(dtype: torch.dtype) -> float:
    """How many times longer a 256×256 matrix product takes in `dtype` than in fp32 on this CPU, measured once
    per process (best of 3; a fraction of a second even where `dtype` has no native kernels)."""

    def best(dt: torch.dtype) -> float:
        g = torch.Generator().manual_seed(0)
        a, b = (torch.randn(256, 256, generator=g).to(dt) for _ in range(2))
        a @ b  # warm-up: kernel selection, first-touch allocation
        times = []
        for _ in range(3):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(dtype) / max(best(torch.float32), 1e-9)


def dtype_note(dtype: torch.dtype, device: torch.device) -> str | None:
    """One line when `dtype` is much slower than fp32 on this CPU (bf16 without native support, fp16), else None."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return None
    ratio = cpu_slowdown(dtype)
    if ratio < SLOW_ON_CPU:
        return None
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return (
        f"--dtype {name} on this CPU (capability {torch.backends.cpu.get_cpu_capability()}, no native {name} "
        f"kernels) runs a matrix product {ratio:.0f}x slower than fp32: this run will be slow; --dtype fp32 "
        "(or auto) is faster here"
    )
