"""Model size and speed figures: parameter counts, tokens/s, peak memory (torch imported lazily)."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def param_count(model: Any, trainable_only: bool = False) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def peak_memory_mb(device: str = "cpu") -> float:
    """torch.cuda.max_memory_allocated on CUDA, else the process peak RSS (MiB)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mb()


def reset_peak_memory(device: str = "cpu") -> None:
    """Reset the CUDA peak counter (no-op on CPU, where RSS peaks cannot be reset)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def tokens_per_second(fn: Callable[[], int], device: str = "cpu") -> tuple[float, int, float]:
    """Run ``fn`` (returns tokens processed) and give (tokens/s, tokens, seconds), syncing CUDA."""
    sync = None
    if str(device).startswith("cuda"):
        import torch

        sync = torch.cuda.synchronize
        sync()
    t0 = time.perf_counter()
    n = fn()
    if sync:
        sync()
    dt = time.perf_counter() - t0
    return (n / dt if dt > 0 else float("nan")), n, dt


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h> mallopt parameters
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit
_kept_freed = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks of up to 32 MB for reuse instead of returning them to the OS
    (Linux/glibc only; True when applied, also on a repeated call). Process-wide and irreversible.

    Why: a CPU training step allocates and frees many large tensors (the teacher's and student's
    activations, a few MB each). glibc serves blocks above its mmap threshold with fresh ``mmap`` pages and
    unmaps them on free, and trims the heap top above its trim threshold, so every step page-faults the
    same memory in again: ~110k minor faults (~430 MB) per step of ``benchmarks/bench_distill.py``'s KD
    step. ``M_MMAP_THRESHOLD`` at glibc's maximum (32 MB) serves those blocks from the heap and a maximal
    ``M_TRIM_THRESHOLD`` stops trimming, leaving ~25k faults (the > 32 MB gradients of the ``[V, H]``
    embedding/head, still mmapped). The process peak is unchanged (measured: VmHWM 1,789 vs 1,782 MB);
    disabling mmap altogether (``M_MMAP_MAX`` 0) removes the rest but fragments the heap (+500 MB peak).
    The PyTorch CPU performance guides give the same advice through jemalloc/tcmalloc."""
    global _kept_freed
    if _kept_freed:
        return True
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _kept_freed = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept_freed
