"""Trace a Hugging Face causal LM with a KV cache to ONNX (torch.onnx dynamo), marking the HoE sites.

Tracing the full HoE model costs minutes per hundred adapted modules (symbolic shapes over E, r and
K); tracing the base model once with a cheap marker after each target linear and splicing the
expert mixture in afterwards (hoe_graph.py) costs the same as exporting the base model alone.

    CausalLMGraph(input_ids, attention_mask, position_ids, *past)  ─► logits, *present
    target linear:  y = W·x  ─►  hoe::LoraSite(x, y) {module}      (identity in PyTorch)
"""

from __future__ import annotations

import logging

import torch
from hoe.contract.io_spec import BATCH, PAST, SEQUENCE, TOTAL, TensorSpec
from torch import nn

from .hoe_graph import SITE_DOMAIN, SITE_OP

log = logging.getLogger(__name__)

EXAMPLE_SIZES = {BATCH: 2, SEQUENCE: 3, PAST: 4, TOTAL: 7}  # ≥ 2 each, so none is specialised to 0/1
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int64": torch.int64, "int8": torch.int8}


@torch.library.custom_op("hoe::lora_site", mutates_args=())
def lora_site(x: torch.Tensor, y: torch.Tensor, module: str) -> torch.Tensor:
    """Marker: returns y. In the ONNX graph it becomes the HoE mixture of `module`."""
    return y.clone()


@lora_site.register_fake
def _lora_site_fake(x, y, module):
    return torch.empty_like(y)


def _site_translation(x, y, module: str):
    import onnxscript
    from onnx.defs import OpSchema

    schema = OpSchema(
        SITE_OP, SITE_DOMAIN, 1,
        inputs=[OpSchema.FormalParameter("x", "T"), OpSchema.FormalParameter("y", "T")],
        outputs=[OpSchema.FormalParameter("z", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "float tensors")],
        attributes=[OpSchema.Attribute("module", OpSchema.AttrType.STRING, "adapted module name")],
    )
    return onnxscript.values.Op(onnxscript.values.Opset(SITE_DOMAIN, 1), SITE_OP, schema)(x, y, module=module)


class MarkedLinear(nn.Module):
    """A target linear followed by the HoE site marker."""

    def __init__(self, linear: nn.Linear, module: str) -> None:
        super().__init__()
        self.linear = linear
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.hoe.lora_site(x, self.linear(x), self.module)


def mark_modules(model: nn.Module, modules: list[str]) -> None:
    """Wrap each target linear of `model` (in place) in a MarkedLinear."""
    for name in modules:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is {type(linear).__name__}, expected nn.Linear")
        setattr(parent, child, MarkedLinear(linear, name))


class CausalLMGraph(nn.Module):
    """Flat-tensor forward of a causal LM with a KV cache: the signature the ONNX graph gets."""

    def __init__(self, model: nn.Module, num_layers: int) -> None:
        super().__init__()
        from hoe.core.model import cache_kwarg

        self.model = model
        self.num_layers = num_layers
        self.cache_arg = cache_kwarg(model)

    def forward(self, input_ids, attention_mask, position_ids, *past):
        from transformers import DynamicCache

        from .fused_attention import fused_modules

        # past: 2L tensors [B,Hkv,P,D] -> present: 2L tensors [B,Hkv,P+T,D]
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        fused = fused_modules(self.model)
        if fused:  # the cache only tells the mask its length: [1,1,P,1], P = mask columns - T (no K/V data;
            # transformers counts an empty tensor as length 0)
            length = attention_mask.shape[1] - input_ids.shape[1]
            stub = attention_mask.new_zeros((1, 1, length, 1), dtype=self.model.dtype)
            for module, pair in zip(fused, pairs):
                module.past = pair
            pairs = [(stub, stub)] * self.num_layers
        cache = DynamicCache(ddp_cache_data=pairs)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self.cache_arg: cache})
        layers = [m.present for m in fused] if fused else [(layer.keys, layer.values) for layer in cache.layers]
        return (out.logits, *[t for pair in layers for t in pair])


def example_inputs(specs: list[TensorSpec], vocab_size: int) -> tuple[torch.Tensor, ...]:
    """Tensors matching `specs` with the symbolic dims at EXAMPLE_SIZES (left padding in row 1)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for spec in specs:
        shape = [EXAMPLE_SIZES[d] if isinstance(d, str) else d for d in spec.shape]
        if spec.name == "input_ids":
            out.append(torch.randint(0, vocab_size, shape, generator=gen))
        elif spec.name == "attention_mask":
            mask = torch.ones(shape, dtype=torch.int64)
            mask[1, :2] = 0
            out.append(mask)
        elif spec.name == "position_ids":
            out.append(torch.arange(EXAMPLE_SIZES[PAST], EXAMPLE_SIZES[TOTAL]).expand(shape).clone())
        elif spec.dtype == "int8":  # an int8 KV cache's rows
            out.append(torch.randint(-127, 128, shape, generator=gen, dtype=torch.int8))
        else:
            out.append(torch.randn(shape, generator=gen).to(_TORCH_DTYPES[spec.dtype]))
    return tuple(out)


def dynamic_shapes(specs: list[TensorSpec], n_fixed: int):
    """torch.export dynamic shapes: one `Dim` per symbolic name; inputs after `n_fixed` are *past."""
    from torch.export import Dim

    dims = {}
    per_input = []
    for spec in specs:
        axes = {}
        for axis, d in enumerate(spec.shape):
            if isinstance(d, str):
                axes[axis] = dims.setdefault(d, Dim(d))
        per_input.append(axes)
    return (*per_input[:n_fixed], tuple(per_input[n_fixed:]))


def trace(model: nn.Module, inputs: list[TensorSpec], outputs: list[TensorSpec], num_layers: int,
          vocab_size: int, opset: int, fused_attention: bool = False, attention_kernel: bool = False,
          int8_cache: bool = False):
    """torch.onnx.export (dynamo) of the flat-tensor forward -> onnx_ir Model (not yet optimised).
    `fused_attention`: every layer's attention becomes GroupQueryAttention (fused_attention.py), or hoe's
    Attention op with `attention_kernel` (its AttentionInt8 form with `int8_cache`)."""
    from . import fused_attention as fa

    n_fixed = len(inputs) - 2 * num_layers
    if fused_attention:
        fa.install(model)
    graph = CausalLMGraph(model, num_layers).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            graph, example_inputs(inputs, vocab_size), dynamo=True, opset_version=opset, optimize=False,
            dynamic_shapes=dynamic_shapes(inputs, n_fixed), input_names=[s.name for s in inputs],
            output_names=[s.name for s in outputs], verbose=False,
            custom_translation_table={torch.ops.hoe.lora_site.default: _site_translation,
                                      **fa.translations(attention_kernel, int8_cache)},
        )
    return program.model
