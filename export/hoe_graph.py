"""Expand every `hoe::LoraSite(x, y)` marker of a traced base graph into HoE's routed expert mixture.

The base model is traced once with each target linear wrapped as `y = W·x` followed by a marker
node (graph.py). The markers are grouped by the tensor x they read (`site_groups`: q/k/v share the
attention-norm output, gate/up the MLP-norm output), and each group of m modules reads its experts and
routers packed (hoe.core.packing), so a group costs two products with x and every module one with its h:

    x [B,T,in] ─► x·A [B,T,m·E·r] ──────────────────────────────────────────────┐
    x [B,T,in] ─► x·W + b [B,T,m·K·E] ─► [B,T,m,K,E] ─► softmax_E (fp32)        │
        ─► g = router_mix [B,1,1,1,K] @ p ─► [B,T,m·E] ─► g @ R [B,T,m·E·r] ─► ⊙ ┘ ─► split m ─► h_i [B,T,E·r]
    per module: z_i = y_i + h_i·B_i (B_i [E·r,out], the expert scaling folded in)

R [m·E, m·E·r] repeats each gate r times; it and the reshape targets are built once per graph from the
input shapes (E, r and K stay dynamic). On SmolLM2 this is 53 HoE nodes per layer (the per-module
layout before needed ~137). Numerics follow hoe.core.model.routed_gates/lora_mixture: router logits in
the model dtype, softmax and gate mixing in fp32, cast back to the model dtype before the expert matmuls.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from hoe.contract.io_spec import TensorSpec
from hoe.core import packing
from hoe.core.packing import SiteGroup

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

    def split(self, x: ir.Value, parts: int, axis: int = -1) -> list[ir.Value]:
        """`parts` equal chunks of x along `axis`."""
        self.count += 1
        node = ir.Node("", "Split", [x], attributes=[ir.AttrInt64("axis", axis), ir.AttrInt64("num_outputs", parts)],
                       num_outputs=parts, name=f"{self.prefix}/Split_{self.count}")
        self.nodes.append(node)
        return list(node.outputs)

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
    """Values every group reads, built once at the top of the graph: router_mix as [B,1,1,1,K] (fp32), and per
    group size m the logits shape [0,0,m,K,-1] and the gate repeat matrix R_m [m·E, m·E·r]."""

    def __init__(self, b: GraphBuilder, router_mix: ir.Value, groups: list[SiteGroup],
                 inputs: dict[str, ir.Value]) -> None:
        fp32 = ir.DataType.FLOAT
        mix = b.op("Unsqueeze", [router_mix, b.const([1, 2, 3])])  # [B,1,1,1,K]
        self.mix = mix if router_mix.dtype == fp32 else b.op("Cast", [mix], to=fp32)
        k = b.op("Shape", [router_mix], start=1, end=2)  # [1]
        self.logits_shape: dict[int, ir.Value] = {}
        self.repeat: dict[int, ir.Value] = {}
        for g in groups:
            m = len(g.modules)
            if m in self.repeat:
                continue
            self.logits_shape[m] = b.op("Concat", [b.const([0, 0, m]), k, b.const([-1])], axis=0)
            me = b.op("Div", [b.op("Shape", [inputs[packing.router_bias(g)]]), k])  # [1] m·E
            mer = b.op("Shape", [inputs[packing.lora_a(g)]], start=1, end=2)  # [1] m·E·r
            rank = b.op("Div", [mer, me])  # [1]
            rows = b.op("Range", [b.const(0), b.op("Squeeze", [me, b.const([0])]), b.const(1)])  # [m·E]
            cols = b.op("Div", [b.op("Range", [b.const(0), b.op("Squeeze", [mer, b.const([0])]), b.const(1)]),
                                rank])  # [m·E·r]: the gate each column takes
            same = b.op("Equal", [b.op("Unsqueeze", [rows, b.const([1])]), b.op("Unsqueeze", [cols, b.const([0])])])
            self.repeat[m] = b.op("Cast", [same], to=b.dtype)  # [m·E, m·E·r]


def _expand_group(b: GraphBuilder, shared: _Shared, g: SiteGroup, x: ir.Value,
                  inputs: dict[str, ir.Value]) -> list[ir.Value]:
    """The gated low-rank projections h_i [B,T,E·r] of the m modules reading x [B,T,in] (module docstring)."""
    fp32, m = ir.DataType.FLOAT, len(g.modules)
    h = b.op("MatMul", [x, inputs[packing.lora_a(g)]])  # [B,T,m·E·r]
    logits = b.op("Add", [b.op("MatMul", [x, inputs[packing.router_weight(g)]]),
                          inputs[packing.router_bias(g)]])  # [B,T,m·K·E], -inf outside the mask
    logits = b.op("Reshape", [logits, shared.logits_shape[m]])  # [B,T,m,K,E]
    if b.dtype != fp32:
        logits = b.op("Cast", [logits], to=fp32)
    probs = b.op("Softmax", [logits], axis=-1)
    gates = b.op("Reshape", [b.op("MatMul", [shared.mix, probs]), b.const([0, 0, -1])])  # [B,T,m·E] fp32
    if b.dtype != fp32:
        gates = b.op("Cast", [gates], to=b.dtype)
    h = b.op("Mul", [h, b.op("MatMul", [gates, shared.repeat[m]])])  # [B,T,m·E·r]
    return [h] if m == 1 else b.split(h, m, axis=-1)  # m × [B,T,E·r]


def site_groups(graph: ir.Graph, modules: list[str], features: dict[str, tuple[int, int]]) -> list[SiteGroup]:
    """The target modules grouped by the tensor their marker reads, in graph order; features: module ->
    (in_features, out_features)."""
    sites = find_sites(graph)
    missing = [m for m in modules if m not in sites]
    if missing:
        raise ValueError(f"traced graph has no marker for modules {missing[:5]}")
    order = {node: i for i, node in enumerate(graph)}
    groups: dict[tuple, list[str]] = {}
    for module in sorted(modules, key=lambda mod: order[sites[mod]]):
        groups.setdefault((id(sites[module].inputs[0]), features[module][0]), []).append(module)
    return [SiteGroup(tuple(mods), features[mods[0]][0], tuple(features[m][1] for m in mods))
            for mods in groups.values()]


def insert_experts(model: ir.Model, groups: list[SiteGroup], specs: list[TensorSpec], router_mix: TensorSpec,
                   dtype: str) -> None:
    """Replace the marker of every module of `groups` by its HoE mixture; add router_mix and the packed
    expert/router inputs (in the order of `specs`) to the graph. Markers of other modules are removed
    (their linear stays plain)."""
    graph = model.graph
    sites = find_sites(graph)
    inputs = {s.name: make_input(s) for s in specs}
    mix = make_input(router_mix)
    position = [v.name for v in graph.inputs].index("position_ids") + 1
    graph.inputs.insert(position, mix)
    graph.inputs.extend(inputs.values())
    b = GraphBuilder(graph, dtype)
    first = graph.node(0)
    shared = _Shared(b, mix, groups, inputs)
    b.flush_before(first)
    for g in groups:
        group_sites = [sites.pop(module) for module in g.modules]
        hs = _expand_group(b, shared, g, group_sites[0].inputs[0], inputs)
        b.flush_before(group_sites[0])
        for module, site, h in zip(g.modules, group_sites, hs):
            z = b.op("Add", [site.inputs[1], b.op("MatMul", [h, inputs[packing.lora_b(module)]])])  # [B,T,out]
            z.shape, z.type = site.outputs[0].shape, site.outputs[0].type  # as traced (fusion rules check shapes)
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
