"""The `base-ort` graph: the same base model exported the same way, without experts (no router_mix, no
expert/router inputs), so HoE's routing price is measured against the very same exporter and runtime.

Uses the exporter's `export_base` (hoe.export.onnx_export): the same trace as the HoE graph, minus the
expert mixture. Exports are cached under `$HOE_CACHE/bench/` by base identity, and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from hoe.core.errors import HoEError

log = logging.getLogger(__name__)


def cached_base_export(base_dir: str | Path, cache: str | Path | None = None, opset: int = 20,
                       like: dict | None = None) -> Path:
    """Folder of the base-only export of `base_dir` (exported once, then reused), built like the HoE export whose
    manifest is `like` (its target and weight precision; None: the exporter's defaults)."""
    from hoe.contract.manifest import is_current, read_manifest
    from hoe.core.atomic import staged_folder
    from hoe.core.smollm2 import cache_dir

    base_dir = Path(base_dir).resolve()
    options = export_options(like or {})
    stamp = _weights_stamp(base_dir) + json.dumps(options, sort_keys=True)  # another graph kind, another folder
    key = hashlib.sha256(str(base_dir).encode() + stamp.encode()).hexdigest()[:16]
    folder = Path(cache or cache_dir() / "bench") / f"base-ort-export-{options.get('weights', 'fp32')}-{key}"
    if (folder / "hoe_config.json").is_file():
        try:
            if is_current(read_manifest(folder)):
                return folder
            log.info("re-exporting the cached base graph %s: made by an older exporter", folder)
        except HoEError as e:
            log.info("re-exporting the cached base graph %s: %s", folder, e)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(folder, replace=True, create=False) as tmp:  # export_base creates it
        export_base(base_dir, tmp, opset, weights=options)
    return folder


def export_options(manifest: dict) -> dict:
    """ExportConfig fields that make a graph like `manifest`'s: its target, its attention kernel and KV cache, and the
    `quantization` section's weight precision and linear kernel ({} of those for fp32)."""
    options = {"target": (manifest.get("model") or {}).get("target", "ort-cpu")}
    from hoe.runtime.kernels import ATTENTION_KERNEL

    kv = manifest.get("kv_cache") or {}
    if kv.get("kernel") == ATTENTION_KERNEL:  # the same attention (and cache precision) as the HoE graph
        options["attention_kernel"] = True
        if kv.get("dtype"):
            options["kv_cache"] = kv["dtype"]
    from hoe.export.quantize import QuantConfig

    quant = manifest.get("quantization")
    if quant and quant.get("weights", "fp32") != "fp32":
        options.update(QuantConfig.section_fields(quant))
    if quant and quant.get("linear_kernel"):  # the same int4 products
        options["linear_kernel"] = True
    return options


def _weights_stamp(base_dir: Path) -> str:
    files = sorted(base_dir.glob("*.safetensors"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def export_base(base_dir: str | Path, out_dir: str | Path, opset: int = 20, threads: int = 1,
                weights: dict | None = None) -> Path:
    """Export the plain base model of `base_dir` to `out_dir` (docs/FORMAT.md folder, `hoe.enabled` false);
    `weights`: ExportConfig fields (export_options)."""
    from hoe.export.onnx_export import ExportConfig
    from hoe.export.onnx_export import export_base as exporter_export_base

    # Not validated here: base-ort is checked against the plain base model by tests/bench, and
    # `hoe bench parity` is the place where numbers are compared.
    exporter_export_base(base_dir, out_dir, ExportConfig(opset=opset, threads=threads, validate=False,
                                                         **(weights or {})))
    return Path(out_dir)
