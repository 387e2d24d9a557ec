"""Fused projections stay TensorRT-ready: `chunk` exports as sequence ops, rewritten here to one static Split.

Phi-3's `gate_up_proj` output is cut by `torch.chunk`, which torch.onnx emits as

    x [B,T,2n] ─► SplitToSequence(split=n, axis=-1) ─► SequenceAt(0), SequenceAt(1)

and TensorRT 10.3's ONNX parser has no sequence ops. When the split size is a constant, the axis size is
static and every use of the sequence is a SequenceAt at a constant position, the same values come from

    x [B,T,2n] ─► Split(split=[n, n], axis=-1) ─► out0, out1

Run on the traced graph (shapes from torch.export are still on the values), before any other pass.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

log = logging.getLogger(__name__)


def split_sequences_to_split(model: ir.Model) -> int:
    """Rewrite every eligible SplitToSequence (module docstring) in place; returns how many were rewritten."""
    graph = model.graph
    done = 0
    for node in [n for n in graph if (n.domain, n.op_type) in (("", "SplitToSequence"),)]:
        sizes = _static_sizes(node)
        readers = [u.node for u in node.outputs[0].uses()]
        positions = [_const_int(r.inputs[1]) if r.op_type == "SequenceAt" and len(r.inputs) == 2 else None
                     for r in readers]
        if sizes is None or any(p is None or not -len(sizes) <= p < len(sizes) for p in positions):
            log.debug("left %s as a sequence split (sizes %s, positions %s)", node.name, sizes, positions)
            continue
        _replace(graph, node, sizes, readers, positions)
        done += 1
    if done:
        log.info("rewrote %d SplitToSequence node(s) into static Split", done)
    return done


def _static_sizes(node: ir.Node) -> list[int] | None:
    """Piece sizes of a SplitToSequence whose input axis and `split` are static; None otherwise."""
    x = node.inputs[0]
    axis = node.attributes.get_int("axis", 0)
    if x.shape is None or len(node.inputs) < 2 or node.attributes.get_int("keepdims", 1) != 1:
        return None
    dim = x.shape[axis]
    split = ir.convenience.get_const_tensor(node.inputs[1]) if node.inputs[1] is not None else None
    if not isinstance(dim, int) or split is None:
        return None
    split = np.asarray(split.numpy()).astype(np.int64)
    if split.ndim == 0:  # equal pieces of `split`, the last one shorter
        step = int(split)
        return [min(step, dim - start) for start in range(0, dim, step)] if step > 0 else None
    return split.tolist() if int(split.sum()) == dim else None


def _const_int(value: ir.Value | None) -> int | None:
    tensor = ir.convenience.get_const_tensor(value) if value is not None else None
    if tensor is None:
        return None
    array = np.asarray(tensor.numpy())
    return int(array) if array.size == 1 else None


def _replace(graph: ir.Graph, node: ir.Node, sizes: list[int], readers: list[ir.Node], positions: list[int]) -> None:
    name = f"{node.name or 'split'}_static"
    split = ir.Value(name=f"{name}_sizes", const_value=ir.tensor(np.asarray(sizes, dtype=np.int64),
                                                                 name=f"{name}_sizes"))
    graph.register_initializer(split)
    axis = node.attributes.get_int("axis", 0)
    new = ir.Node("", "Split", [node.inputs[0], split], attributes=[ir.AttrInt64("axis", axis)],
                  num_outputs=len(sizes), name=name)
    graph.insert_before(node, new)
    for reader, pos in zip(readers, positions):
        out = new.outputs[pos % len(sizes)]
        if out.shape is None:
            out.shape, out.type = reader.outputs[0].shape, reader.outputs[0].type
        if reader.outputs[0].is_graph_output():
            raise ValueError(f"{reader.name}'s output is a graph output; cannot rewrite {node.name}")
        reader.outputs[0].replace_all_uses_with(out)
        graph.remove(reader, safe=True)
    graph.remove(node, safe=True)
