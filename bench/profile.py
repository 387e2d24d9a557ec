"""Where decode time goes inside an onnxruntime session: per-op-type milliseconds per decode token.

    session with enable_profiling ─► greedy run (prefill + N decode steps) ─► end_profiling() JSON
      ─► "Node" events after the first model_run (the prefill) ─► Σ dur per op type / N

Used by `hoe bench latency --profile` to compare hoe-ort with base-ort op by op.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
from hoe.runtime.backends.ort import OrtBackend

log = logging.getLogger(__name__)


class ProfilingOrtBackend(OrtBackend):
    """The runtime's onnxruntime backend with ORT's profiler on."""

    name = "ort-profiling"

    def __init__(self, manifest, config, prefix: str) -> None:
        super().__init__(manifest, config)
        self.prefix = prefix

    def _session_options(self, ort):
        so = super()._session_options(ort)
        so.enable_profiling = True
        so.profile_file_prefix = self.prefix
        return so


def decode_op_times(events: list[dict]) -> tuple[dict[str, float], dict[str, int], int]:
    """(total µs per op type, node count per op type per run, decode runs) over the runs after the first."""
    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                  key=lambda e: e["ts"])
    if len(runs) < 2:
        return {}, {}, 0
    prefill_end = runs[0]["ts"] + runs[0]["dur"]
    total: Counter = Counter()
    count: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= prefill_end:
            op = e.get("args", {}).get("op_name", "?")
            total[op] += e["dur"]
            count[op] += 1
    decode_runs = len(runs) - 1
    return dict(total), {op: c // decode_runs for op, c in count.items()}, decode_runs


def profile_decode(folder: str | Path, router_mix: np.ndarray, threads: int, work: str | Path,
                   prompt_len: int = 32, steps: int = 16, vocab: int | None = None) -> dict:
    """{"ms_per_token": {op: ms}, "nodes_per_token": {op: n}, "total_ms": float, "steps": int}."""
    from hoe.contract.folder import Manifest

    from .systems import BackendSystem, backend_config, greedy_run

    manifest = Manifest.load(folder, verify=False)
    prefix = str(Path(work) / f"profile_{Path(folder).name}")
    backend = ProfilingOrtBackend(manifest, backend_config(threads), prefix).activate()
    try:
        prompt = np.random.default_rng(0).integers(3, vocab or manifest.vocab_size, size=(1, prompt_len))
        greedy_run(BackendSystem("profile", backend, router_mix), prompt, steps + 1)
        path = backend.session.end_profiling()
    finally:
        backend.deactivate()
    events = json.loads(Path(path).read_text())
    total, nodes, runs = decode_op_times(events)
    ms = {op: us / 1e3 / runs for op, us in sorted(total.items(), key=lambda kv: -kv[1])} if runs else {}
    return {"ms_per_token": ms, "nodes_per_token": nodes, "total_ms": sum(ms.values()), "steps": runs}
