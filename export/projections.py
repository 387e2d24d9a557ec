"""Projections that read the same input become one product: q/k/v of a layer, gate/up of its MLP.

The traced graph holds one MatMul per linear, with the weight as Transpose(W [out, in]) of an initializer
(and, for linears with a bias, an Add of a 1-D initializer). Linears reading the same tensor x are packed:

    x [B,T,in] ─► MatMul(W_1ᵀ) [+ b_1] ─► y_1          x [B,T,in] ─► MatMul([W_1ᵀ | … | W_mᵀ]) [+ [b_1 … b_m]]
    x [B,T,in] ─► MatMul(W_2ᵀ) [+ b_2] ─► y_2    ==>              ─► Split([out_1, …, out_m], axis=-1) ─► y_1 … y_m
    …

One larger product instead of m small ones: fewer kernel launches per token, and the weight-only
quantization (quantize.py, blocks along `in`) quantizes each column exactly as it would alone. The HoE
mixture of such a group then adds its whole correction before the Split (hoe_graph.py). Standard ONNX
ops only (TensorRT-ready). Run on the traced graph, before the expert mixtures are spliced in.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx_ir as ir

log = logging.getLogger(__name__)


PACKED_LINEARS = "hoe.packed_linears"  # Value.meta key: how many linears a packed weight holds


def packed_linears(weight: ir.Value) -> int:
    """How many model linears a MatMul weight holds (1 unless packed here)."""
    return int(weight.meta.get(PACKED_LINEARS, 1))


def pack_projections(model: ir.Model) -> int:
    """Pack every group of ≥ 2 linears reading one tensor (module docstring), in place. -> groups packed."""
    readers: dict[int, list[tuple[ir.Node, np.ndarray, ir.Node | None]]] = {}
    for node in model.graph:
        found = _linear(node)
        if found is not None:
            readers.setdefault(id(node.inputs[0]), []).append((node, *found))
    packed = 0
    for group in readers.values():
        with_bias = sum(bias is not None for _, _, bias in group)
        if len(group) >= 2 and with_bias in (0, len(group)):
            _pack(model.graph, group)
            packed += 1
    if packed:
        log.info("packed %d groups of projections reading one input", packed)
    return packed


def _linear(node: ir.Node) -> tuple[np.ndarray, ir.Node | None] | None:
    """(W [in, out] as the MatMul uses it, its bias Add or None) of a MatMul x·Wᵀ (+ b), else None."""
    if (node.domain, node.op_type) != ("", "MatMul") or node.inputs[0] is None or node.inputs[1] is None:
        return None
    weight = _constant_weight(node.inputs[1])
    uses = node.outputs[0].uses()
    if weight is None or weight.ndim != 2 or not uses:
        return None
    add = uses[0].node if len(uses) == 1 else None
    return weight, (add if add is not None and _bias(add, node.outputs[0], weight.shape[1]) is not None else None)


def _constant_weight(value: ir.Value) -> np.ndarray | None:
    """An initializer [in, out], or Transpose(perm=[1, 0]) of one; None for anything else."""
    if value.const_value is not None and value.is_initializer():
        return value.const_value.numpy()
    producer = value.producer()
    if producer is None or producer.op_type != "Transpose" or len(value.uses()) != 1:
        return None
    source = producer.inputs[0]
    perm = producer.attributes.get_ints("perm", None)
    if (source is None or source.const_value is None or (perm is not None and tuple(perm) != (1, 0))
            or len(source.shape or ()) != 2):
        return None
    return source.const_value.numpy().T


def _bias(add: ir.Node, y: ir.Value, width: int) -> ir.Value | None:
    """The 1-D initializer [width] that `add` = Add(y, b) adds to y, or None when it is not that."""
    if (add.domain, add.op_type) != ("", "Add") or len(add.inputs) != 2:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    ok = (other is not None and other.const_value is not None and other.is_initializer()
          and tuple(other.const_value.shape) == (width,))
    return other if ok else None


def _pack(graph: ir.Graph, group: list[tuple[ir.Node, np.ndarray, ir.Node | None]]) -> None:
    first, x = group[0][0], group[0][0].inputs[0]
    name = _common_name([_source(n.inputs[1]).name or n.name for n, _, _ in group])
    weight = _initializer(graph, f"{name}packed_weight", np.concatenate([w for _, w, _ in group], axis=1))
    weight.meta[PACKED_LINEARS] = len(group)
    nodes = [ir.Node("", "MatMul", [x, weight], name=f"{name}packed_matmul")]
    y = nodes[-1].outputs[0]
    if group[0][2] is not None:
        bias = np.concatenate([_bias(add, n.outputs[0], w.shape[1]).const_value.numpy() for n, w, add in group])
        nodes.append(ir.Node("", "Add", [y, _initializer(graph, f"{name}packed_bias", bias)],
                             name=f"{name}packed_bias_add"))
        y = nodes[-1].outputs[0]
    widths = [w.shape[1] for _, w, _ in group]
    sizes = _initializer(graph, f"{name}packed_sizes", np.asarray(widths, dtype=np.int64))
    split = ir.Node("", "Split", [y, sizes], attributes=[ir.AttrInt64("axis", -1)], num_outputs=len(group),
                    name=f"{name}packed_split")
    graph.insert_before(first, [*nodes, split])
    old_outputs = [(add or mm).outputs[0] for mm, _, add in group]
    y.type = old_outputs[0].type
    if old_outputs[0].shape is not None:
        y.shape = ir.Shape([*list(old_outputs[0].shape)[:-1], sum(widths)])
    for old, new in zip(old_outputs, split.outputs):
        if old.is_graph_output():
            raise ValueError(f"{old.name} is a graph output; cannot pack its projection")
        new.shape, new.type = old.shape, old.type
        old.replace_all_uses_with(new)
    for mm, _, add in group:
        constants = [_source(mm.inputs[1])] + ([v for v in add.inputs if v.is_initializer()] if add else [])
        for node in (add, mm, mm.inputs[1].producer()):
            if node is not None and node.graph is graph and not any(len(o.uses()) for o in node.outputs):
                graph.remove(node, safe=True)
        for value in constants:  # the old weights and biases, now unread
            if not value.uses() and value.name in graph.initializers:
                graph.initializers.pop(value.name)


def _source(weight: ir.Value) -> ir.Value:
    """The initializer a MatMul weight comes from (itself, or the input of its Transpose)."""
    producer = weight.producer()
    return producer.inputs[0] if producer is not None and producer.op_type == "Transpose" else weight


def _initializer(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
    graph.register_initializer(value)
    return value


def _common_name(names: list[str]) -> str:
    """`model.model.layers.0.self_attn.` from the members' weight names (their shared dotted prefix)."""
    prefix = os.path.commonprefix(names)
    return prefix[:prefix.rfind(".") + 1] if "." in prefix else (prefix or "projection_")
