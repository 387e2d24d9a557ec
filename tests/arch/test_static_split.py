"""export/static_split.py on small graphs: the static Split gives onnxruntime the same values as the sequence ops,
and a split it cannot make static is left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from hoe.export.static_split import split_sequences_to_split
from onnx import TensorProto, helper


def _graph(width, split, positions) -> onnx.ModelProto:
    """y_i = SequenceAt(SplitToSequence(x, split, axis=-1), positions[i]) for x [2, width]."""
    nodes = [helper.make_node("Constant", [], ["s"], value=helper.make_tensor("s", TensorProto.INT64,
                                                                               np.shape(split), np.ravel(split))),
             helper.make_node("SplitToSequence", ["x", "s"], ["seq"], axis=-1)]
    outputs = []
    for i, p in enumerate(positions):
        nodes.append(helper.make_node("Constant", [], [f"p{i}"], value=helper.make_tensor(f"p{i}", TensorProto.INT64,
                                                                                          [], [p])))
        nodes.append(helper.make_node("SequenceAt", ["seq", f"p{i}"], [f"a{i}"]))
        nodes.append(helper.make_node("Identity", [f"a{i}"], [f"y{i}"]))
        outputs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, width])], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


@pytest.mark.parametrize("width, split, positions", [
    (8, 4, [0, 1]),  # Phi-3's gate|up: two equal halves
    (7, 3, [0, -1, 1]),  # uneven last piece, a negative position
    (6, [1, 2, 3], [2, 0]),  # explicit sizes, pieces read in another order
])
def test_same_values_as_the_sequence_ops(width, split, positions):
    proto = _graph(width, split, positions)
    x = np.random.default_rng(0).normal(size=(2, width)).astype(np.float32)
    model = ir.from_proto(proto)
    assert split_sequences_to_split(model) == 1
    ops = [n.op_type for n in model.graph]
    assert "Split" in ops and not [o for o in ops if "Sequence" in o]
    for want, got in zip(_run(proto, x), _run(ir.to_proto(model), x)):
        np.testing.assert_array_equal(got, want)


def test_dynamic_axis_is_left_alone():
    proto = _graph(8, 4, [0, 1])
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "width"
    model = ir.from_proto(proto)
    assert split_sequences_to_split(model) == 0
    assert "SplitToSequence" in [n.op_type for n in model.graph]
