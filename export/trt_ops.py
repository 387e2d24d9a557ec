"""Static TensorRT 10.x readiness check of an ONNX graph (TensorRT cannot be installed here).

The rules are onnx-tensorrt's operator matrix, docs/operators.md at its 10.1-GA tag: the newest 10.x table
that could be read (JetPack 6 ships TensorRT 10.3, whose table was not available; the parser of a later
10.x release reads at least what 10.1's does, as far as we know). A graph is ready when:
  * its default-domain opset is in 9..20 ("TensorRT 10.0 supports operators in the inclusive range of opset 9
    to opset 20") and no node lives outside the standard domain;
  * every op type is a "Y" row of the matrix (SUPPORTED_OPS; ops added after opset 20, e.g. Attention,
    RMSNormalization, RotaryEmbedding at opset 23, are not in it; the window ops and STFT are "N");
  * every tensor type is one TensorRT accepts: no strings, complex or 16/32/64-bit unsigned; UINT8 only on
    graph inputs/outputs ("UINT8 is only supported as network input or output tensor types"); DOUBLE is
    refused here although the parser casts it down to FLOAT with clamping, a silent precision change;
  * the matrix's restrictions that a static check can see (CONST_INPUTS, NODE_RULES): inputs that "must be an
    initializer" / "a constant tensor" / "a build-time constant" come from initializers or Constant nodes
    (Reduce* and Squeeze `axes`, Unsqueeze `axes`, CumSum `axis`, Slice `axes`, Pad `axes`, OneHot `depth`,
    Dropout `training_mode`); TopK has `sorted` = 1 and, when K is a constant, K < 3840; Constant nodes have
    no sparse or string value.
The 10.x table has no rule on Range (the "floating-point inputs only if they are initializers" rule is from
7.x-8.2), and TopK's K need not be an initializer any more (an 8.2-8.5 rule).
It cannot prove that an engine builds (memory, tactic and shape-profile limits, rules on attributes it does
not check such as Resize modes or pooling dilations); that needs the device.
  * block-wise weight-only quantization (`hoe export --target tensorrt --weights int4`): INT4 tensors are
    accepted only as initializers read by DequantizeLinear (TensorRT 10's INT4 weight-only path, with zero
    points absent), and such a graph may import opset 21 (QDQ_OPSET), the first with DequantizeLinear's
    `block_size` (TensorRT 10.0+ reads it for INT4 weights; not verified on hardware here).

To add a rule (e.g. for another op or opset), extend CONST_INPUTS or NODE_RULES; each rule names its row of
the table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

TRT_VERSION = "10.3"
TABLE = "onnx-tensorrt 10.1-GA docs/operators.md"
OPSET_RANGE = (9, 20)
QDQ_OPSET = 21  # the opset of block-wise DequantizeLinear, accepted for INT4 weight-only graphs
STANDARD_DOMAINS = ("", "ai.onnx")

# The "Y" rows of the 10.1-GA operator matrix (all of them exist at opset <= 20).
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

_P = onnx.TensorProto
ACCEPTED_DTYPES = frozenset({_P.FLOAT, _P.FLOAT16, _P.BFLOAT16, _P.INT32, _P.INT64, _P.INT8, _P.BOOL})
IO_ONLY_DTYPES = frozenset({_P.UINT8})

_REDUCE = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
           "ReduceProd", "ReduceSum", "ReduceSumSquare")
# op type -> {input index: what the table calls it} for inputs that must be build-time constants
CONST_INPUTS: dict[str, dict[int, str]] = {
    **{op: {1: "axes"} for op in _REDUCE},  # "`axes` must be an initializer" (where axes is an input)
    "Squeeze": {1: "axes"},  # "`axes` must be an initializer"
    "Unsqueeze": {1: "axes"},  # "`axes` must be a constant tensor"
    "CumSum": {1: "axis"},  # "`axis` must be an initializer"
    "Slice": {3: "axes"},  # "`axes` must be an initializer" (inputs: data, starts, ends, axes, steps)
    "Pad": {3: "axes"},  # "`axes` must be an initializer" (inputs: data, pads, constant_value, axes)
    "OneHot": {1: "depth"},  # "`depth` must be a build-time constant"
    "Dropout": {2: "training_mode"},  # "`is_traning` must be an initializer and evaluate to False"
}
TOPK_MAX_K = 3840  # TopK: "`K` input must be less than 3840"

Rule = Callable[[onnx.NodeProto, "Constants"], "str | None"]  # (node, constants) -> problem or None


class Constants:
    """Names whose values are known at build time (initializers, Constant outputs, outer scopes included)."""

    def __init__(self, graph: onnx.GraphProto, outer: Constants | None = None) -> None:
        self.tensors = {i.name: i for i in graph.initializer}
        self.nodes = {o: n for n in graph.node if n.op_type == "Constant" for o in n.output}
        self.outer = outer

    def __contains__(self, name: str) -> bool:
        return name in self.tensors or name in self.nodes or (self.outer is not None and name in self.outer)

    def value(self, name: str):
        """The numpy value, or None when it is not a constant or cannot be read (e.g. external data)."""
        try:
            if name in self.tensors:
                return numpy_helper.to_array(self.tensors[name])
            if name in self.nodes:
                return _constant_value(self.nodes[name])
        except (ValueError, TypeError, OSError):
            return None
        return self.outer.value(name) if self.outer is not None else None


def _constant_value(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
            return np.asarray(onnx.helper.get_attribute_value(attr))
    return None


def _topk(node: onnx.NodeProto, constants: Constants) -> str | None:
    """TopK: "`sorted` must be 1. `K` input must be less than 3840." (K is an attribute before opset 10)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("sorted", 1) != 1:
        return "sorted must be 1"
    k = attrs.get("k")
    if k is None and len(node.input) > 1 and node.input[1]:
        value = constants.value(node.input[1])
        k = None if value is None else int(max(value.reshape(-1), default=0))
    if k is not None and k >= TOPK_MAX_K:
        return f"K = {k}, must be less than {TOPK_MAX_K}"
    return None


def _constant(node: onnx.NodeProto, constants: Constants) -> str | None:
    """Constant: "`sparse_value`, `value_string`, and `value_strings` attributes are unsupported"."""
    bad = sorted(a.name for a in node.attribute if a.name in ("sparse_value", "value_string", "value_strings"))
    return f"attribute {bad[0]} is unsupported" if bad else None


# op type -> rules beyond constant inputs; each returns a problem (str) or None
NODE_RULES: dict[str, list[Rule]] = {"TopK": [_topk], "Constant": [_constant]}


@dataclass
class TrtReport:
    """What the static check found; `ready` when no problem was found."""

    opset: int
    op_counts: dict[str, int]
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"TensorRT {TRT_VERSION} readiness: {'READY' if self.ready else 'NOT READY'} (opset {self.opset}, " \
               f"{sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types; rules of {TABLE})"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def to_dict(self) -> dict:
        return {"trt_version": TRT_VERSION, "rules": TABLE, "ready": self.ready, "opset": self.opset,
                "op_counts": self.op_counts, "problems": self.problems}


def check_model(model: onnx.ModelProto | str | Path) -> TrtReport:
    """Check an ONNX model (proto or path; external data is not read)."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)
    problems = []
    block_dq = any(n.op_type == "DequantizeLinear" and any(a.name == "block_size" for a in n.attribute)
                   for n in model.graph.node)
    top = QDQ_OPSET if block_dq else OPSET_RANGE[1]
    if not OPSET_RANGE[0] <= opset <= top:
        problems.append(f"opset {opset} is outside TensorRT {TRT_VERSION}'s range {OPSET_RANGE}")
    foreign = sorted({o.domain for o in model.opset_import if o.domain not in STANDARD_DOMAINS})
    if foreign:
        problems.append(f"opset imports outside the standard domain: {foreign}")
    if model.functions:
        problems.append(f"model-local functions are present: {[f.name for f in model.functions][:5]}")
    counts: Counter = Counter()
    _check_graph(model.graph, counts, problems, None)
    return TrtReport(opset=opset, op_counts=dict(counts.most_common()), problems=problems)


def _check_graph(graph: onnx.GraphProto, counts: Counter, problems: list[str], outer: Constants | None) -> None:
    constants = Constants(graph, outer)
    io_names = {v.name for v in (*graph.input, *graph.output)} if outer is None else set()
    for value in (*graph.input, *graph.output, *graph.value_info):
        _check_dtype(value.name, value.type.tensor_type.elem_type, value.name in io_names, problems)
    dq_weights = {n.input[0] for n in graph.node if n.op_type == "DequantizeLinear" and len(n.input) < 3}
    for init in graph.initializer:
        if init.data_type == _P.INT4 and init.name in dq_weights:
            continue  # INT4 weight-only: DequantizeLinear's quantized input, no zero point
        _check_dtype(init.name, init.data_type, False, problems)
    for node in graph.node:
        counts[node.op_type] += 1
        _check_node(node, constants, problems)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                _check_graph(attr.g, counts, problems, constants)


def _check_node(node: onnx.NodeProto, constants: Constants, problems: list[str]) -> None:
    label = f"{node.op_type} node {node.name or node.output[0]!r}"
    if node.domain not in STANDARD_DOMAINS:
        problems.append(f"{label} is in domain {node.domain!r}, not the standard ONNX domain")
        return
    if node.op_type not in SUPPORTED_OPS:
        problems.append(f"{label}: op type {node.op_type} is not supported by TensorRT {TRT_VERSION}'s parser")
    for index, what in CONST_INPUTS.get(node.op_type, {}).items():
        if len(node.input) > index and node.input[index] and node.input[index] not in constants:
            problems.append(f"{label}: input {index} ({what}: {node.input[index]}) must be a build-time constant "
                            "for TensorRT")
    for rule in NODE_RULES.get(node.op_type, []):
        problem = rule(node, constants)
        if problem:
            problems.append(f"{label}: {problem} for TensorRT")
    for attr in node.attribute:
        if attr.name == "to" and node.op_type == "Cast":
            _check_dtype(f"{label} 'to'", attr.i, False, problems)
        if attr.type == onnx.AttributeProto.TENSOR:
            _check_dtype(f"{label} attribute {attr.name}", attr.t.data_type, False, problems)


def _check_dtype(what: str, dtype: int, is_io: bool, problems: list[str]) -> None:
    if dtype == _P.UNDEFINED or dtype in ACCEPTED_DTYPES or (is_io and dtype in IO_ONLY_DTYPES):
        return
    problems.append(f"{what} has dtype {onnx.TensorProto.DataType.Name(dtype)}, which TensorRT {TRT_VERSION} rejects")
