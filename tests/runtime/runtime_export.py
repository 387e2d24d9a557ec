"""Tests-only stand-in exporter (torch.onnx dynamo) used while `hoe.export` has no export function.

Writes the folder of docs/FORMAT.md with export.io_spec / export.manifest, so the runtime is
tested against the same contract the real exporter writes. Prefer `exported_folder` below: it
uses the real exporter when there is one.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def exported_folder(base_dir: Path, ckpt_dir: Path, out_dir: Path) -> Path:
    """Export with hoe.export when it offers `export_hoe`, else with the stand-in below."""
    try:
        from hoe.export import export_hoe  # the real exporter, once it exists
    except ImportError:
        export_hoe = None
    if export_hoe is not None:
        export_hoe(base_dir, ckpt_dir, out_dir)
        return out_dir
    return standin_export(base_dir, ckpt_dir, out_dir)


def standin_export(base_dir: Path, ckpt_dir: Path, out_dir: Path, opset: int = 20) -> Path:
    import torch
    from hoe.core import names
    from hoe.core.loading import load_hoe
    from hoe.export import io_spec
    from hoe.export.manifest import hoe_section, write_manifest
    from safetensors.numpy import save_file
    from transformers import DynamicCache

    model = load_hoe(base_dir, ckpt_dir)
    hcfg, cfg = model.config, model.model.config
    n_layers, hd = cfg.num_hidden_layers, getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    exp, rou = names.expert_names(hcfg.target_modules), names.router_names(hcfg.target_modules)
    named = model.named_tensors()
    tensors = {n: named[n].detach().clone() for n in exp + rou}  # graph order: experts, then routers

    class Graph(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, router_mix, past, tensors):
            cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(n_layers)], config=cfg)
            logits, cache = self.m(input_ids, router_mix, attention_mask=attention_mask, position_ids=position_ids,
                                   cache=cache, tensors=tensors)
            return (logits, *[t for layer in cache.layers for t in (layer.keys, layer.values)])

    b, t, p = 2, 3, 4
    example = dict(input_ids=torch.randint(0, cfg.vocab_size, (b, t)),
                   attention_mask=torch.ones(b, p + t, dtype=torch.long),
                   position_ids=torch.arange(p, p + t).repeat(b, 1), router_mix=torch.rand(b, hcfg.n_routers),
                   past=[torch.randn(b, cfg.num_key_value_heads, p, hd) for _ in range(2 * n_layers)],
                   tensors=tensors)
    dim = torch.export.Dim
    bd, sd, pd, td = dim("batch"), dim("sequence"), dim("past_sequence"), dim("total_sequence")
    dynamic = dict(input_ids={0: bd, 1: sd}, attention_mask={0: bd, 1: td}, position_ids={0: bd, 1: sd},
                   router_mix={0: bd}, past=[{0: bd, 2: pd} for _ in range(2 * n_layers)],
                   tensors={n: {} for n in tensors})
    dims = io_spec.ModelDims(n_layers, cfg.num_key_value_heads, hd, cfg.vocab_size, "float32")
    features = {m: (model.model.get_submodule(m).base.in_features, model.model.get_submodule(m).base.out_features)
                for m in hcfg.target_modules}
    in_specs = io_spec.graph_inputs(dims, io_spec.expert_tensor_specs(hcfg.target_modules, features, "float32"))
    out_specs = io_spec.graph_outputs(dims)
    out_dir.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(Graph(model).eval(), (), kwargs=example, dynamo=True, dynamic_shapes=dynamic,
                                    opset_version=opset, input_names=[s.name for s in in_specs],
                                    output_names=[s.name for s in out_specs], verbose=False)
    program.save(str(out_dir / "model.onnx"), external_data=True)
    arrays = {n: v.numpy() for n, v in tensors.items()}
    save_file({n: arrays[n] for n in exp}, str(out_dir / "experts.safetensors"))
    save_file({n: arrays[n] for n in rou}, str(out_dir / "routers.safetensors"))
    hcfg.save(out_dir / "hoe.json")
    files = {"experts": "experts.safetensors", "routers": "routers.safetensors", "hoe": "hoe.json"}
    for key, name in (("tokenizer", "tokenizer.json"), ("tokenizer_config", "tokenizer_config.json"),
                      ("chat_template", "chat_template.jinja")):
        if (Path(base_dir) / name).is_file():
            shutil.copyfile(Path(base_dir) / name, out_dir / name)
            files[key] = name
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    data = (out_dir / "model.onnx.data").is_file()
    manifest = {
        "format_version": 1,
        "model": {"file": "model.onnx", "external_data": "model.onnx.data" if data else None, "dtype": "fp32",
                  "opset": opset},
        "architecture": {"model_type": cfg.model_type, "num_layers": n_layers,
                         "num_attention_heads": cfg.num_attention_heads, "num_kv_heads": cfg.num_key_value_heads,
                         "head_dim": hd, "hidden_size": cfg.hidden_size,
                         "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings},
        "inputs": {s.name: s.to_dict() for s in in_specs}, "outputs": {s.name: s.to_dict() for s in out_specs},
        "kv_cache": dict(io_spec.KV_CACHE), "hoe": hoe_section(hcfg, exp, rou), "files": files,
        "tokens": {"eos_token_ids": [int(e) for e in eos if e is not None],
                   "pad_token_id": cfg.pad_token_id if cfg.pad_token_id is not None else eos[0],
                   "bos_token_id": cfg.bos_token_id},
        "generation": {"max_new_tokens": 64}, "tools": {"exporter": "tests/runtime/runtime_export.py"},
        "source": {"base": str(base_dir), "hoe": str(ckpt_dir)}, "sha256": {},
    }
    write_manifest(out_dir, manifest)
    return out_dir
