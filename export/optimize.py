"""Graph clean-up after tracing: constant folding, dead-code removal, CSE, constants as initializers.

onnxscript's full `optimize` also runs its pattern rewriter, which took ~8 minutes on SmolLM2's
12k-node graph here (its matcher rescans the node list per rule) and removed little that folding
does not; we run the folding and the cheap onnx-ir passes only. Folding turns the traced
`Transpose(W)` of every linear into a pre-transposed initializer, and CSE shares what several
consumers of one tensor compute (e.g. the [N,in] view of x that q/k/v's expert mixtures all read).
Every Softmax on a float16 tensor is computed in float32 (Cast in, Cast back out): the traced
attention softmax can land in fp16 even where PyTorch asks for `softmax(..., dtype=float32)`.
A transposed weight that is also used untransposed (tied embeddings: `lm_head = embed_tokensᵀ`)
is not folded (that would store it twice) nor transposed at run time: its MatMul becomes a Gemm
with transB=1 on the stored weight.

For the onnxruntime targets (`fused`), onnxscript's ORT fusion rules for RMSNorm then turn each
Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul chain into SimplifiedLayerNormalization and each residual
Add feeding one into SkipSimplifiedLayerNormalization (onnxruntime 1.32 fuses neither itself at load;
only these two rule sets are run, which cost seconds where the full rewriter costs minutes).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common
from onnxscript.optimizer import _constant_folding

from .hoe_graph import GraphBuilder


def optimize(model: ir.Model, fused: bool = False) -> None:
    """Optimise `model` in place; `fused` (onnxruntime targets) also fuses RMSNorm (fuse_norms)."""
    logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.WARNING)
    gemm_for_shared_transposes(model)
    softmax_in_fp32(model)
    fold = ir.passes.PassManager(
        [_constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=8192, output_size_limit=1 << 18,
                                             should_fold=lambda node: None),
         common.RemoveUnusedNodesPass(), common.RemoveUnusedOpsetsPass()],
        steps=2, early_stop=True)
    fold(model)
    if fused:
        fuse_norms(model)
    ir.passes.Sequential(
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)


def fuse_norms(model: ir.Model) -> dict[str, int]:
    """RMSNorm -> SimplifiedLayerNormalization, residual Add + RMSNorm -> SkipSimplifiedLayerNormalization
    (onnxscript.rewriter.ort_fusions rules). Returns the counts."""
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization

    counts = {"SimplifiedLayerNormalization": fuse_rms_normalization(model)}
    counts["SkipSimplifiedLayerNormalization"] = fuse_skip_rms_normalization(model)
    logging.getLogger(__name__).info("fused norms: %s", counts)
    return counts


def gemm_for_shared_transposes(model: ir.Model) -> int:
    """MatMul(x, Transpose(W)) with W a 2-D initializer used elsewhere too -> Gemm(x2, W, transB=1).

        x [..., D] ─► [N,D] ─► Gemm(W [V,D], transB) [N,V] ─► [..., V]
    Returns how many MatMuls were rewritten.
    """
    graph = model.graph
    b = GraphBuilder(graph, "float32", prefix="tied")
    count = 0
    for node in list(graph):
        weight = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if weight is None or weight.const_value is None or len(weight.shape or ()) != 2:
            continue
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0] or len(weight.uses()) < 2:
            continue
        for use in list(node.outputs[0].uses()):
            matmul = use.node
            if matmul.op_type != "MatMul" or use.idx != 1:
                continue
            x = matmul.inputs[0]
            d_in, d_out = weight.shape[1], weight.shape[0]
            gemm = b.op("Gemm", [b.op("Reshape", [x, b.const([-1, d_in])]), weight], transB=1)  # [N,V]
            shape = b.op("Concat", [b.op("Shape", [x], end=-1), b.const(np.array([d_out]))], axis=0)
            out = b.op("Reshape", [gemm, shape])  # [..., V]
            b.flush_before(matmul)
            matmul.outputs[0].replace_all_uses_with(out, replace_graph_outputs=True)
            out.name, matmul.outputs[0].name = matmul.outputs[0].name, None
            graph.remove(matmul, safe=True)
            count += 1
        if not node.outputs[0].uses():
            graph.remove(node, safe=True)
    return count


def softmax_in_fp32(model: ir.Model) -> int:
    """x16 ─► Softmax ─► y16 becomes x16 ─► Cast(fp32) ─► Softmax ─► Cast(fp16) ─► y16. Returns the count."""
    graph = model.graph
    b = GraphBuilder(graph, "float32", prefix="fp32softmax")
    count = 0
    for node in list(graph):
        x = node.inputs[0] if node.op_type == "Softmax" and node.domain == "" else None
        if x is None or x.dtype not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            continue
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else -1
        y = b.op("Cast", [b.op("Softmax", [b.op("Cast", [x], to=ir.DataType.FLOAT)], axis=axis)], to=x.dtype)
        b.flush_before(node)
        out = node.outputs[0]
        out.replace_all_uses_with(y, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        count += 1
    return count
