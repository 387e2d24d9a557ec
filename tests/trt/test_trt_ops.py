"""The TensorRT readiness check follows onnx-tensorrt's 10.x operator matrix (10.1-GA docs/operators.md):
window ops and STFT unsupported, TopK's K < 3840 (not "an initializer"), Slice/Pad `axes` and OneHot `depth`
constant, no Range rule, outer-scope constants visible in subgraphs."""

from __future__ import annotations

import numpy as np
import pytest
from hoe.export.trt_ops import SUPPORTED_OPS, check_model
from onnx import TensorProto, helper, numpy_helper


def _vi(name, dtype=TensorProto.FLOAT, shape=("b", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _init(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _report(nodes, inputs, outputs, inits=(), opset=20):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return check_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


@pytest.mark.parametrize("op", ["HannWindow", "HammingWindow", "BlackmanWindow", "STFT"])
def test_window_ops_and_stft_are_not_supported(op):
    assert op not in SUPPORTED_OPS
    report = _report([helper.make_node(op, ["n"], ["y"])], [_vi("n", TensorProto.INT64, ())], [_vi("y")])
    assert any(f"op type {op} is not supported" in p for p in report.problems)


def _topk(k_input, inits=(), **attrs):
    node = helper.make_node("TopK", ["x", k_input], ["v", "i"], axis=-1, **attrs)
    inputs = [_vi("x")] + ([_vi(k_input, TensorProto.INT64, (1,))] if not inits else [])
    return _report([node], inputs, [_vi("v"), _vi("i", TensorProto.INT64)], inits)


def test_topk_rules_are_the_10x_ones():
    assert _topk("k").ready  # K from a graph input: allowed in 10.x (the "initializer" rule was 8.2-8.5)
    assert _topk("k", [_init("k", [3839])]).ready
    big = _topk("k", [_init("k", [3840])])
    assert any("K = 3840, must be less than 3840" in p for p in big.problems)
    unsorted = _topk("k", [_init("k", [4])], sorted=0)
    assert any("sorted must be 1" in p for p in unsorted.problems)


@pytest.mark.parametrize("op, inputs, const_index", [
    ("Slice", ["x", "starts", "ends", "axes"], 3),
    ("Pad", ["x", "pads", "", "axes"], 3),
    ("Squeeze", ["x", "axes"], 1),
    ("CumSum", ["x", "axes"], 1),
])
def test_axes_must_be_constants(op, inputs, const_index):
    others = [_init(n, [0]) for n in ("starts", "ends", "pads") if n in inputs]
    if op == "Pad":
        others = [_init("pads", [0, 0])]
    dynamic = _report([helper.make_node(op, inputs, ["y"])], [_vi("x"), _vi("axes", TensorProto.INT64, (1,))],
                      [_vi("y")], others)
    assert any(f"input {const_index} (" in p and "must be a build-time constant" in p for p in dynamic.problems)
    constant = _report([helper.make_node(op, inputs, ["y"])], [_vi("x")], [_vi("y")], [*others, _init("axes", [1])])
    assert constant.ready, constant.problems


def test_onehot_depth_and_constant_attributes():
    onehot = _report([helper.make_node("OneHot", ["i", "depth", "values"], ["y"])],
                     [_vi("i", TensorProto.INT64), _vi("depth", TensorProto.INT64, ())], [_vi("y")],
                     [_init("values", [0.0, 1.0], np.float32)])
    assert any("depth" in p and "build-time constant" in p for p in onehot.problems)
    text = _report([helper.make_node("Constant", [], ["c"], value_string="x"),
                    helper.make_node("Identity", ["x"], ["y"])], [_vi("x")], [_vi("y")])
    assert any("value_string is unsupported" in p for p in text.problems)


def test_range_has_no_10x_rule():
    """Range with non-constant float inputs parses in 10.x (the initializer rule was 7.x-8.2)."""
    scalar = lambda n: _vi(n, TensorProto.FLOAT, ())  # noqa: E731
    report = _report([helper.make_node("Range", ["a", "b", "d"], ["y"])], [scalar("a"), scalar("b"), scalar("d")],
                     [_vi("y", shape=("n",))])
    assert report.ready, report.problems


def test_subgraphs_see_outer_constants():
    then = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["t"])], "then", [],
                             [_vi("t", shape=("b", 1, 4))])
    other = helper.make_graph([helper.make_node("Unsqueeze", ["x", "axes"], ["e"])], "else", [],
                              [_vi("e", shape=("b", 1, 4))])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    report = _report([node], [_vi("x"), _vi("c", TensorProto.BOOL, ())], [_vi("y", shape=("b", 1, 4))],
                     [_init("axes", [1])])
    assert report.ready, report.problems
