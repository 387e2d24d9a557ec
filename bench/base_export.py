"""The `base-ort` graph: the same base model exported the same way, without experts (no router_mix, no
expert/router inputs), so HoE's routing price is measured against the very same exporter and runtime.

Uses the exporter's `export_base` (hoe.export.onnx_export): the same trace as the HoE graph, minus the
expert mixture. Exports are cached under `$HOE_CACHE/bench/` by base identity, and reused.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from hoe.core.errors import ConfigError

log = logging.getLogger(__name__)


def cached_base_export(base_dir: str | Path, cache: str | Path | None = None, opset: int = 20) -> Path:
    """Folder of the base-only export of `base_dir` (exported once, then reused)."""
    from hoe.contract.folder import Manifest
    from hoe.core.atomic import staged_folder
    from hoe.core.smollm2 import cache_dir

    base_dir = Path(base_dir).resolve()
    key = hashlib.sha256(str(base_dir).encode() + _weights_stamp(base_dir).encode()).hexdigest()[:16]
    folder = Path(cache or cache_dir() / "bench") / f"base-ort-export-{key}"  # "export": made by hoe.export
    if (folder / "hoe_config.json").is_file():
        try:
            Manifest.load(folder, verify=False)
            return folder
        except ConfigError as e:  # made by an older exporter
            log.info("re-exporting the cached base graph %s: %s", folder, e)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with staged_folder(folder, replace=True, create=False) as tmp:  # export_base creates it
        export_base(base_dir, tmp, opset)
    return folder


def _weights_stamp(base_dir: Path) -> str:
    files = sorted(base_dir.glob("*.safetensors"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def export_base(base_dir: str | Path, out_dir: str | Path, opset: int = 20, threads: int = 1) -> Path:
    """Export the plain base model of `base_dir` to `out_dir` (docs/FORMAT.md folder, `hoe.enabled` false)."""
    from hoe.export.onnx_export import ExportConfig
    from hoe.export.onnx_export import export_base as exporter_export_base

    # Not validated here: base-ort is checked against the plain base model by tests/bench, and
    # `hoe bench parity` is the place where numbers are compared.
    exporter_export_base(base_dir, out_dir, ExportConfig(opset=opset, threads=threads, validate=False))
    return Path(out_dir)
