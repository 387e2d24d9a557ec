"""The memory-bandwidth floor of decoding: weight bytes read per token / measured read bandwidth.

At batch 1 a decode step streams every weight matrix from memory once and writes almost nothing, so no
implementation can be faster than `bytes_per_token / read bandwidth`. The read bandwidth is measured with
numpy's max over an array much larger than the caches: one thread, a read-only stream, SIMD, no writes.

The copy bandwidth (a numpy copy, bytes read + written, the STREAM convention) is measured as well and
reported beside it, but it is no yardstick for reading. On the Xeon of docs/BENCHMARKS.md one core copies
at 22-25 GB/s yet reads at most ~16.5 GB/s: the copy's non-temporal writes do not hold the core's read
buffers, and BLAS sdot, another read-only loop, peaks at the same 16.5. On an EPYC the copy read slower
than the decoder did (x floor 0.93). Both bandwidths are best-of: the floor is a bound.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_ONNX_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2,
                  21: 0.5, 22: 0.5}  # UINT4 / INT4: two per byte
# Embedding lookups read a few rows per token: the table input of these ops is not counted.
_LOOKUP_OPS = {"Gather": (0,), "GatherBlockQuantized": (0, 2, 3), "GatherInt4": (0,)}


def copy_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Best-of-`repeats` numpy copy bandwidth in GB/s (1e9 bytes), read + write bytes counted."""
    src = np.ones(size_mb * 2**20 // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), repeats) / 1e9


def read_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Best-of-`repeats` read bandwidth in GB/s (1e9 bytes): numpy's max over a float32 array, one thread."""
    data = np.ones(size_mb * 2**20 // 4, dtype=np.float32)
    return data.nbytes / _best_seconds(data.max, repeats) / 1e9


def bandwidths(size_mb: int = 256, repeats: int = 5) -> dict[str, float]:
    """{"read_gbs", "copy_gbs"}: both bandwidths, measured now."""
    return {"read_gbs": read_bandwidth_gbs(size_mb, repeats), "copy_gbs": copy_bandwidth_gbs(size_mb, repeats)}


def _best_seconds(run, repeats: int) -> float:
    run()  # touch the arrays once
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def graph_weight_bytes(onnx_path: str | Path) -> int:
    """Bytes of the graph's initializers that one decode step reads in full.

    An initializer consumed only by Gather / GatherBlockQuantized nodes (an embedding table, its scales and
    zero points) contributes a few rows per token, so it is not counted; a tied embedding that also feeds
    the LM head's MatMul(NBits) is counted. Packed int4 weights count half a byte per value.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    gather_only = _gather_only_inputs(model.graph)
    total = 0
    for init in model.graph.initializer:
        if init.name in gather_only:
            continue
        total += int(np.ceil(int(np.prod(init.dims, dtype=np.int64)) * _ONNX_ITEMSIZE.get(init.data_type, 4)))
    return total


def _gather_only_inputs(graph) -> set[str]:
    users: dict[str, set[str]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            # Gather's data is input 0; as its indices (input 1) a tensor is read in full.
            users.setdefault(name, set()).add("lookup" if i in _LOOKUP_OPS.get(node.op_type, ()) else node.op_type)
    # a Reshape of a table that only feeds lookups (the shared int4 table, see export/quantize.py) is a lookup too
    for node in graph.node:
        if node.op_type == "Reshape" and users.get(node.output[0]) == {"lookup"}:
            users.setdefault(node.input[0], set()).discard("Reshape")
            users[node.input[0]].add("lookup")
    return {name for name, ops in users.items() if ops == {"lookup"}}


def file_bytes(*paths: str | Path | None) -> int:
    """Total size of the given files (experts/routers safetensors are read whole every step)."""
    return sum(Path(p).stat().st_size for p in paths if p is not None and Path(p).is_file())


def floor_ms(bytes_per_token: int, bandwidth_gbs: float) -> float:
    return bytes_per_token / (bandwidth_gbs * 1e9) * 1e3
