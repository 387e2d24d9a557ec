"""Exported folders for runtime tests, made by the real exporter (hoe.export)."""

from __future__ import annotations

from pathlib import Path


def exported_folder(base_dir: Path, ckpt_dir: Path, out_dir: Path, experts: bool = True,
                    target: str = "ort-cpu", **options) -> Path:
    """`hoe export` of base + HoE checkpoint into `out_dir` (options: more ExportConfig fields). The exporter's own
    PyTorch validation is skipped: the runtime tests compare against the PyTorch reference themselves."""
    from hoe.export.onnx_export import ExportConfig, export

    export(base_dir, ckpt_dir, out_dir, ExportConfig(validate=False, experts=experts, target=target, **options))
    return out_dir
