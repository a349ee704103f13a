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
