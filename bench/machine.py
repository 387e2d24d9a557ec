"""The machine a benchmark ran on, its load, and the process's memory (Linux /proc, no extra packages).

    machine_info() -> {"cpu": ..., "cores": 2, "memory_gb": 23.4, "load_average": [...], "versions": {...}}
    rss_mb()       -> current resident set size of this process
    PeakRss        -> peak RSS while a block runs (resets the kernel's high-water mark first)
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import resource
from pathlib import Path

log = logging.getLogger(__name__)

_PACKAGES = ("hoe", "numpy", "onnxruntime", "onnx", "torch", "transformers")
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo on Linux, else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gb() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None
    return round(pages * size / 2**30, 1)


def versions(packages: tuple[str, ...] = _PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent)."""
    out = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores (visible and usable), memory, load, OS, Python, package versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_name(), "arch": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable,
            "memory_gb": memory_gb(), "load_average": load_average(), "os": platform.platform(),
            "python": platform.python_version(), "versions": versions()}


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field in MiB, else the lifetime peak RSS (getrusage)."""
    kb = _status_kb(field)
    if kb is None:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024


def rss_mb() -> float:
    """Current resident set size in MiB (falls back to the lifetime peak where /proc is absent)."""
    return _status_mb("VmRSS")


def _reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False where not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    return _status_mb("VmHWM")


class PeakRss:
    """Peak RSS growth (MiB) over a block: `with PeakRss() as p: ...; p.growth_mb`.

    Linux: the high-water mark is reset on entry, so `growth_mb` = peak inside the block - RSS at entry.
    Elsewhere only the current RSS at exit is seen (`exact` is False).
    """

    def __enter__(self) -> PeakRss:
        self.start_mb = rss_mb()
        self.exact = _reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        end = rss_mb()
        self.peak_mb = max(peak_mb(), end) if self.exact else end
        self.growth_mb = max(0.0, self.peak_mb - self.start_mb)
