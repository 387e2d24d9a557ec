"""Expand every `hoe::LoraSite(x, y)` marker of a traced base graph into HoE's routed expert mixture.

The base model is traced once with each target linear wrapped as `y = W·x` followed by a marker
node (graph.py). Here each marker becomes, with the expert and router tensors as graph inputs,
a computation in "tokens last" layout (N = B·T columns), so every weight is used as stored —
no per-step copy, transpose or reshape of an expert or router tensor:

    x [B,T,in] ─► xᵀ [in,N] ─► W [K,E,in] @ xᵀ + b ─► [K,E,N] + mask_bias ─► softmax_E (fp32)
                                   router_mix per token [K,1,N] ─► Σ_K ─► gᵀ [E,N] · s [E,1]
    A [E,r,in] @ xᵀ ─► [E,r,N] ⊙ (g·s)ᵀ[E,1,N] ─► B [E,out,r] @ · ─► [E,out,N] ─► Σ_E ─► [out,N]
        ─► ᵀ [N,out] ─► [B,T,out] ─► z = y + Δy

What every module shares is built once: mask_bias [K,E,1] (0 / -inf), router_mix per token
[K,1,N], the [B,T,out] shapes per `out`; CSE later shares xᵀ among modules that read the same x.
Numerics follow hoe.core.model.routed_gates/lora_mixture: router logits in the model dtype, then
softmax and gate arithmetic in fp32, cast back to the model dtype before the expert matmuls.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hoe.core import names

from .io_spec import TensorSpec

SITE_DOMAIN, SITE_OP = "hoe", "LoraSite"

_DTYPES = {"float32": ir.DataType.FLOAT, "float16": ir.DataType.FLOAT16, "int64": ir.DataType.INT64}


def make_input(spec: TensorSpec) -> ir.Value:
    return ir.Value(name=spec.name, type=ir.TensorType(_DTYPES[spec.dtype]), shape=ir.Shape(list(spec.shape)))


def find_sites(graph: ir.Graph) -> dict[str, ir.Node]:
    """module name -> its marker node."""
    return {n.attributes["module"].as_string(): n for n in graph if (n.domain, n.op_type) == (SITE_DOMAIN, SITE_OP)}


class GraphBuilder:
    """Appends nodes before an anchor node; caches constants and shared sub-graphs."""

    def __init__(self, graph: ir.Graph, dtype: str, prefix: str = "hoe") -> None:
        self.graph = graph
        self.prefix = prefix
        self.dtype = _DTYPES[dtype]
        self.nodes: list[ir.Node] = []
        self.consts: dict[tuple, ir.Value] = {}
        self.count = 0

    def op(self, op_type: str, inputs: list, **attrs) -> ir.Value:
        self.count += 1
        node = ir.Node("", op_type, inputs, attributes=[ir.convenience.convert_attribute(k, v)
                                                        for k, v in attrs.items()],
                       name=f"{self.prefix}/{op_type}_{self.count}")
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, value, dtype=np.int64) -> ir.Value:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            name = f"{self.prefix}_const_{len(self.consts)}"
            v = ir.Value(name=name, const_value=ir.tensor(array, name=name))
            self.graph.register_initializer(v)
            self.consts[key] = v
        return self.consts[key]

    def flush_before(self, anchor: ir.Node) -> None:
        self.graph.insert_before(anchor, self.nodes)
        self.nodes = []


class _Shared:
    """Values every HoE module reads, computed once at the top of the graph."""

    def __init__(self, b: GraphBuilder, input_ids: ir.Value, router_mix: ir.Value, mask: ir.Value) -> None:
        fp32 = ir.DataType.FLOAT
        self.b = b
        # mask_bias [K,E,1]: 0 where router k may route to expert j, -inf elsewhere (exact zeros after softmax)
        bias = b.op("Where", [b.op("Greater", [mask, b.const(0.0, np.float32)]),
                              b.const(0.0, np.float32), b.const(-np.inf, np.float32)])
        self.mask_bias = b.op("Unsqueeze", [bias, b.const([2])])
        self.bt = b.op("Shape", [input_ids])  # [B,T]
        # router_mix [B,K] -> per token, tokens last: [K,1,N]
        btk = b.op("Concat", [self.bt, b.op("Shape", [router_mix], start=1)], axis=0)
        mix = b.op("Expand", [b.op("Unsqueeze", [router_mix, b.const([1])]), btk])  # [B,T,K]
        mix = b.op("Reshape", [mix, b.op("Concat", [b.const([-1]), b.op("Shape", [router_mix], start=1)], axis=0)])
        mix = b.op("Transpose", [b.op("Cast", [mix], to=fp32)], perm=[1, 0])  # [K,N]
        self.mix = b.op("Unsqueeze", [mix, b.const([1])])  # [K,1,N] fp32
        self.out_shapes: dict[int, ir.Value] = {}

    def out_shape(self, d_out: int) -> ir.Value:
        if d_out not in self.out_shapes:
            self.out_shapes[d_out] = self.b.op("Concat", [self.bt, self.b.const([d_out])], axis=0)
        return self.out_shapes[d_out]


def _expand_site(b: GraphBuilder, shared: _Shared, site: ir.Node, t: dict[str, ir.Value], d_in: int, d_out: int):
    """Nodes computing z = y + Δy for one module (see the module docstring). Returns z."""
    fp32 = ir.DataType.FLOAT
    x, y = site.inputs[0], site.inputs[1]
    xt = b.op("Transpose", [b.op("Reshape", [x, b.const([-1, d_in])])], perm=[1, 0])  # [in,N]
    bias = b.op("Unsqueeze", [t["bias"], b.const([2])])  # [K,E,1]
    logits = b.op("Add", [b.op("MatMul", [t["weight"], xt]), bias])  # [K,E,N]
    if b.dtype != fp32:
        logits = b.op("Cast", [logits], to=fp32)
    probs = b.op("Softmax", [b.op("Add", [logits, shared.mask_bias])], axis=1)  # [K,E,N] fp32
    gates = b.op("ReduceSum", [b.op("Mul", [probs, shared.mix]), b.const([0])], keepdims=0)  # [E,N]
    scaling = t["scaling"] if b.dtype == fp32 else b.op("Cast", [t["scaling"]], to=fp32)
    gs = b.op("Mul", [gates, b.op("Unsqueeze", [scaling, b.const([1])])])  # [E,N] fp32
    if b.dtype != fp32:
        gs = b.op("Cast", [gs], to=b.dtype)
    h = b.op("Mul", [b.op("MatMul", [t["lora_A"], xt]), b.op("Unsqueeze", [gs, b.const([1])])])  # [E,r,N]
    y3 = b.op("MatMul", [t["lora_B"], h])  # [E,out,N]
    delta = b.op("Transpose", [b.op("ReduceSum", [y3, b.const([0])], keepdims=0)], perm=[1, 0])  # [N,out]
    return b.op("Add", [y, b.op("Reshape", [delta, shared.out_shape(d_out)])])  # [B,T,out]


def insert_experts(model: ir.Model, modules: list[str], specs: list[TensorSpec], router_mix: TensorSpec,
                   features: dict[str, tuple[int, int]], dtype: str) -> None:
    """Replace the marker of every module in `modules` by its HoE mixture; add router_mix and the
    expert/router inputs (in the order of `specs`) to the graph. Markers of other modules are
    removed (their linear stays plain)."""
    graph = model.graph
    sites = find_sites(graph)
    missing = [m for m in modules if m not in sites]
    if missing:
        raise ValueError(f"traced graph has no marker for modules {missing[:5]}")
    inputs = {s.name: make_input(s) for s in specs}
    mix = make_input(router_mix)
    position = [v.name for v in graph.inputs].index("position_ids") + 1
    graph.inputs.insert(position, mix)
    graph.inputs.extend(inputs.values())
    b = GraphBuilder(graph, dtype)
    first = graph.node(0)
    shared = _Shared(b, graph.inputs[0], mix, inputs[names.ROUTER_MASK])
    b.flush_before(first)
    for module in modules:
        site = sites.pop(module)
        t = {"weight": inputs[names.router_weight(module)], "bias": inputs[names.router_bias(module)],
             "lora_A": inputs[names.lora_a(module)], "lora_B": inputs[names.lora_b(module)],
             "scaling": inputs[names.scaling(module)]}
        z = _expand_site(b, shared, site, t, *features[module])
        b.flush_before(site)
        _bypass(graph, site, z)
    for site in sites.values():
        _bypass(graph, site, site.inputs[1])
    _drop_site_opset(model)


def remove_sites(model: ir.Model) -> None:
    """Plain base graph: every marker becomes a pass-through of the linear's output."""
    for site in find_sites(model.graph).values():
        _bypass(model.graph, site, site.inputs[1])
    _drop_site_opset(model)


def _bypass(graph: ir.Graph, site: ir.Node, value: ir.Value) -> None:
    out = site.outputs[0]
    if out.is_graph_output():
        raise ValueError(f"marker output {out.name} is a graph output")
    out.replace_all_uses_with(value)
    graph.remove(site, safe=True)


def _drop_site_opset(model: ir.Model) -> None:
    model.opset_imports.pop(SITE_DOMAIN, None)
    model.graph.opset_imports.pop(SITE_DOMAIN, None)
