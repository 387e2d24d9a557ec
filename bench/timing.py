"""Timing helpers: medians and p90 of samples, and a best-effort thread setting for every library in play.

Benchmarks time in one process, round-robin over the systems (see latency.py), and report medians and
the 90th percentile, never means: a noisy shared machine adds a long tail that a mean would smear in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


def summary(samples_ms: Sequence[float]) -> dict[str, float]:
    """{"median", "p90", "min", "n"} of a list of milliseconds."""
    if not len(samples_ms):
        return {"median": float("nan"), "p90": float("nan"), "min": float("nan"), "n": 0}
    arr = np.asarray(samples_ms, dtype=np.float64)
    return {"median": float(np.median(arr)), "p90": float(np.percentile(arr, 90)), "min": float(arr.min()),
            "n": int(arr.size)}


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Milliseconds of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def rotated(items: Sequence, shift: int) -> list:
    """`items` rotated left by `shift`: repetition r starts with system r, so no system is always first."""
    if not items:
        return []
    k = shift % len(items)
    return list(items[k:]) + list(items[:k])


def set_torch_threads(threads: int) -> None:
    """torch.set_num_threads (and inter-op) when torch is importable; a no-op otherwise."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first parallel work; harmless when already set
        log.debug("torch inter-op threads already fixed at %d", torch.get_num_interop_threads())
