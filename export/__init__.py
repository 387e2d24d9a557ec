"""HoE -> ONNX export (`hoe export`): base weights baked in, experts/routers as graph inputs, KV cache.

Importing this package does not import torch. Entry points:
  * `export_hoe(base_dir, ckpt_dir, out_dir, config=None)`  (onnx_export.export)
  * `export_base(base_dir, out_dir, config=None)`            plain base graph, no experts
  * `hoe.contract.manifest`                                  torch-free reader/writer of hoe_config.json
"""


def export_hoe(base_dir, ckpt_dir, out_dir, config=None):
    """Export base + HoE checkpoint to `out_dir` and validate it (see onnx_export.export)."""
    from .onnx_export import export

    return export(base_dir, ckpt_dir, out_dir, config)


def export_base(base_dir, out_dir, config=None, ckpt_dir=None):
    """Export the plain base graph (no router_mix, no expert inputs) to `out_dir`."""
    from .onnx_export import export_base as _export_base

    return _export_base(base_dir, out_dir, config, ckpt_dir)
