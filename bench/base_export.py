"""The `base-ort` graph: the same base model exported the same way, without experts (no router_mix, no
expert/router inputs), so HoE's routing price is measured against the very same exporter and runtime.

Uses the exporter's `export_base` (hoe.export.onnx_export) when present: the same trace as the HoE graph,
minus the expert mixture. Otherwise exports here with torch.onnx (dynamo) and the exporter's own I/O
contract (io_spec) and manifest writer. Exports are cached under `$HOE_CACHE/bench/` by base identity and
by which exporter made them, and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from hoe.core.errors import ConfigError

log = logging.getLogger(__name__)


def cached_base_export(base_dir: str | Path, cache: str | Path | None = None, opset: int = 20,
                       quant: dict | None = None) -> Path:
    """Folder of the base-only export of `base_dir` (exported once, then reused), at the weight precision of
    `quant` (a manifest's `quantization` section; None or fp32: as exported)."""
    from hoe.core.smollm2 import cache_dir
    from hoe.runtime.manifest import Manifest

    base_dir = Path(base_dir).resolve()
    weights = _weight_options(quant)
    stamp = _weights_stamp(base_dir) + ("" if not weights else json.dumps(weights, sort_keys=True))
    key = hashlib.sha256(str(base_dir).encode() + stamp.encode()).hexdigest()[:16]
    maker = "export" if _exporter() is not None else "bench"
    if weights:
        maker += f"-{weights['weights']}"
    folder = Path(cache or cache_dir() / "bench") / f"base-ort-{maker}-{key}"
    if (folder / "hoe_config.json").is_file():
        try:
            Manifest.load(folder, verify=False)
            return folder
        except ConfigError as e:  # made by an older exporter
            log.info("re-exporting the cached base graph %s: %s", folder, e)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        export_base(base_dir, tmp / "out", opset, weights=weights)
        shutil.rmtree(folder, ignore_errors=True)
        (tmp / "out").rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _weight_options(quant: dict | None) -> dict:
    """ExportConfig fields of a manifest's `quantization` section ({} for fp32)."""
    if not quant or quant.get("weights", "fp32") == "fp32":
        return {}
    keys = ("weights", "block_size", "symmetric", "accuracy_level", "target", "table")
    return {k: quant[k] for k in keys if k in quant}


def _weights_stamp(base_dir: Path) -> str:
    files = sorted(base_dir.glob("*.safetensors"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


def _exporter():
    """The exporter's `export_base`, or None while hoe.export has none."""
    try:
        from hoe.export.onnx_export import export_base as exporter_export_base
    except ImportError:
        return None
    return exporter_export_base


def export_base(base_dir: str | Path, out_dir: str | Path, opset: int = 20, threads: int = 1,
                weights: dict | None = None) -> Path:
    """Export the plain base model of `base_dir` to `out_dir` (docs/FORMAT.md folder, `hoe.enabled` false);
    `weights`: ExportConfig weight-precision fields (the exporter's own export_base only)."""
    exporter_export_base = _exporter()
    if exporter_export_base is not None:
        from hoe.export.onnx_export import ExportConfig

        # Not validated here: base-ort is checked against the plain base model by tests/bench, and
        # `hoe bench parity` is the place where numbers are compared.
        exporter_export_base(base_dir, out_dir, ExportConfig(opset=opset, threads=threads, validate=False,
                                                             **(weights or {})))
        return Path(out_dir)
    log.info("hoe.export has no export_base: exporting the base graph with torch.onnx here")
    return _export_base_here(Path(base_dir), Path(out_dir), opset)


def _export_base_here(base_dir: Path, out_dir: Path, opset: int) -> Path:
    import torch
    from hoe.core.loading import load_base
    from hoe.core.model import cache_kwarg, output_cache
    from hoe.export import io_spec

    model = load_base(base_dir)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cache_arg = cache_kwarg(model)

    class Graph(torch.nn.Module):
        def __init__(self, m) -> None:
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, past):
            from transformers import DynamicCache

            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n_layers)], config=cfg)
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{cache_arg: cache})
            return (out.logits, *[t for layer in output_cache(out).layers for t in (layer.keys, layer.values)])

    b, t, p = 2, 3, 4
    example = dict(input_ids=torch.randint(0, cfg.vocab_size, (b, t)),
                   attention_mask=torch.ones(b, p + t, dtype=torch.long),
                   position_ids=torch.arange(p, p + t).repeat(b, 1),
                   past=[torch.randn(b, cfg.num_key_value_heads, p, head_dim) for _ in range(2 * n_layers)])
    dim = torch.export.Dim
    bd, sd, pd, td = dim(io_spec.BATCH), dim(io_spec.SEQUENCE), dim(io_spec.PAST), dim(io_spec.TOTAL)
    dynamic = dict(input_ids={0: bd, 1: sd}, attention_mask={0: bd, 1: td}, position_ids={0: bd, 1: sd},
                   past=[{0: bd, 2: pd} for _ in range(2 * n_layers)])
    dims = io_spec.ModelDims(n_layers, cfg.num_key_value_heads, head_dim, cfg.vocab_size, "float32")
    in_specs, out_specs = io_spec.graph_inputs(dims, None), io_spec.graph_outputs(dims)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(Graph(model).eval(), (), kwargs=example, dynamo=True, dynamic_shapes=dynamic,
                                    opset_version=opset, input_names=[s.name for s in in_specs],
                                    output_names=[s.name for s in out_specs], verbose=False)
    program.save(str(out_dir / "model.onnx"), external_data=True)
    _write_manifest(base_dir, out_dir, cfg, dims, in_specs, out_specs, opset)
    return out_dir


def _write_manifest(base_dir: Path, out_dir: Path, cfg, dims, in_specs, out_specs, opset: int) -> None:
    from hoe.export import io_spec
    from hoe.export.manifest import FORMAT_VERSION, hoe_section, write_manifest

    files = {}
    for key, name in (("tokenizer", "tokenizer.json"), ("tokenizer_config", "tokenizer_config.json"),
                      ("chat_template", "chat_template.jinja")):
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, out_dir / name)
            files[key] = name
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    eos = [int(e) for e in eos if e is not None]
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": {"file": "model.onnx", "external_data": "model.onnx.data", "dtype": "fp32", "opset": opset},
        "architecture": {"model_type": cfg.model_type, "num_layers": dims.num_layers,
                         "num_attention_heads": cfg.num_attention_heads, "num_kv_heads": dims.num_kv_heads,
                         "head_dim": dims.head_dim, "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
                         "max_position_embeddings": cfg.max_position_embeddings},
        "inputs": {s.name: s.to_dict() for s in in_specs}, "outputs": {s.name: s.to_dict() for s in out_specs},
        "kv_cache": dict(io_spec.KV_CACHE), "hoe": hoe_section(None, [], [], []), "files": files,
        "tokens": {"eos_token_ids": eos, "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None
                   else (eos or [0])[0], "bos_token_id": cfg.bos_token_id},
        "generation": {"max_new_tokens": 128}, "tools": {"exporter": "hoe.bench.base_export"},
        "source": {"base": str(base_dir)}, "sha256": {},
    }
    write_manifest(out_dir, manifest)
