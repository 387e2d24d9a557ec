"""Graph clean-up after tracing: constant folding, dead-code removal, CSE, constants as initializers.

onnxscript's full `optimize` also runs its pattern rewriter, which took ~8 minutes on SmolLM2's
12k-node graph here (its matcher rescans the node list per rule) and removed little that folding
does not; we run the folding and the cheap onnx-ir passes only. Folding turns the traced
`Transpose(W)` of every linear into a pre-transposed initializer, and CSE shares what several
consumers of one tensor compute (e.g. the [N,in] view of x that q/k/v's expert mixtures all read).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnx_ir.passes import common
from onnxscript.optimizer import _constant_folding


def optimize(model: ir.Model) -> None:
    """Optimise `model` in place."""
    logging.getLogger("onnx_ir.passes.common.initializer_deduplication").setLevel(logging.WARNING)
    fold = ir.passes.PassManager(
        [_constant_folding.FoldConstantsPass(shape_inference=True, input_size_limit=8192, output_size_limit=1 << 18,
                                             should_fold=lambda node: None),
         common.RemoveUnusedNodesPass(), common.RemoveUnusedOpsetsPass()],
        steps=2, early_stop=True)
    ir.passes.Sequential(
        fold,
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)
