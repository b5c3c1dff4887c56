"""The process a run executes in: distributed setup (torchrun or SLURM variables), the
device, seeding, determinism, signal handling and how the C heap treats large tensors."""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import random
import re
import signal

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainError

__all__ = ["setup_distributed", "resolve_device", "seed_everything", "determinism", "stop_on_signals",
           "reuse_freed_memory", "notebook_threads"]


def _slurm_to_torch_env() -> None:
    """Fill RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from SLURM when srun started one task per GPU."""
    env = os.environ
    if "RANK" in env or int(env.get("SLURM_NTASKS", "1")) <= 1 or "SLURM_PROCID" not in env:
        return
    env["RANK"], env["WORLD_SIZE"] = env["SLURM_PROCID"], env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        nodes = env.get("SLURM_STEP_NODELIST", env.get("SLURM_NODELIST", "localhost"))
        m = re.match(r"([^,\[]+)(?:\[(\d+))?", nodes)  # "gpu[03-06,09]" -> "gpu03"
        env["MASTER_ADDR"] = m.group(1) + (m.group(2) or "")
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0")) % 1000))


def setup_distributed(device_kind: str) -> tuple[int, int, int, bool]:
    """(rank, world_size, local_rank, created) from torchrun/SLURM variables."""
    _slurm_to_torch_env()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
        return rank, world, local, True
    return rank, world, local, False


def resolve_device(cfg: dict) -> str:
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if cfg["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg["device"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def notebook_threads(load: float | None = None, cores: int | None = None) -> int | None:
    """Threads for a notebook's training runs: 1 when the CPU is already busy, else ``None``.

    ``None`` means torch's default. On a shared 2-core machine torch's default two threads
    per process made each training step about 10x slower than one thread when the cores
    were busy. ``load`` (default: the 1-minute load average) counts as busy above
    ``cores - 0.5`` (default: ``os.cpu_count()``).
    """
    load = os.getloadavg()[0] if load is None else load
    cores = (os.cpu_count() or 1) if cores is None else cores
    return 1 if load > cores - 0.5 else None


@contextlib.contextmanager
def stop_on_signals(request_stop):
    """SIGTERM/SIGINT call ``request_stop(signum)`` instead of ending the process (main thread only)."""
    previous = {}
    handler = lambda signum, frame: request_stop(signum)  # noqa: E731
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave the defaults
            pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def determinism(cfg: dict):
    """``deterministic: true``: deterministic algorithms and no cuDNN autotuning, restored on exit."""
    previous = torch.are_deterministic_algorithms_enabled()
    bench = torch.backends.cudnn.benchmark
    if cfg["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg["deterministic"]
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.backends.cudnn.benchmark = bench


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory(keep_bytes: int = 2**31 - 1) -> bool:
    """Make glibc reuse freed CPU tensor memory instead of returning it to the kernel.

    By default glibc serves every block above 32 MB (and, until its threshold
    adapts, above 128 kB) with a fresh ``mmap`` and unmaps it on free, so a CPU
    training step that creates weight-sized tensors (effective binary weights,
    their gradients, optimizer temporaries) page-faults on all of them again,
    every step: about 63,000 faults (257 MB) per step of ReActNet-A at 32x32
    batch 32, a quarter of the step. With ``mmap`` off and the trim threshold at
    ``keep_bytes`` the freed blocks stay in the heap and the next step reuses
    them; the process keeps up to its peak (plus ``keep_bytes``) resident, as
    CUDA's caching allocator does on the GPU.

    Process-wide and not undone; the training CLI calls it. Returns False where
    the C library is not glibc (nothing changes there).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, int(keep_bytes)))
