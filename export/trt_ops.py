"""Static TensorRT 10.3 readiness check of an ONNX graph (TensorRT cannot be installed here).

JetPack 6 ships TensorRT 10.3, whose ONNX parser (onnx-tensorrt) reads opsets 9 to 20. A graph is
ready when:
  * its default-domain opset is in that range and no node lives outside the standard domain;
  * every op type is one the parser supports (the operator matrix of onnx-tensorrt's 10.x line,
    limited to ops that exist at opset <= 20; ops added later, e.g. Attention, RMSNormalization,
    RotaryEmbedding at opset 23, are not in the set);
  * every tensor type is one TensorRT accepts (no DOUBLE, strings, complex, 16/32/64-bit unsigned);
    UINT8 only on graph inputs/outputs;
  * the parser's "must be a build-time constant" restrictions hold: the `axes` of Reduce*/Squeeze/
    Unsqueeze, CumSum's `axis`, TopK's `K` come from initializers or Constant nodes, and Range's
    inputs are integers unless constant.
  * block-wise weight-only quantization (`hoe export --target tensorrt --weights int4`): INT4 tensors
    are accepted only as initializers read by DequantizeLinear (TensorRT 10's INT4 weight-only path, with
    zero points absent), and such a graph may import opset 21, the first with DequantizeLinear's
    `block_size` (TensorRT 10.0+ reads it for INT4 weights; not verified on hardware here).
It cannot prove that an engine builds (memory, tactic and shape-profile limits); that needs the device.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

TRT_VERSION = "10.3"
OPSET_RANGE = (9, 20)
QDQ_OPSET = 21  # the opset of block-wise DequantizeLinear, accepted for INT4 weight-only graphs
STANDARD_DOMAINS = ("", "ai.onnx")

# onnx-tensorrt operator matrix (TensorRT 10.x), "Y" rows that exist at opset <= 20.
SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow HardSigmoid HardSwish
Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean
MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike
Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd
ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze STFT Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

_P = onnx.TensorProto
ACCEPTED_DTYPES = frozenset({_P.FLOAT, _P.FLOAT16, _P.BFLOAT16, _P.INT32, _P.INT64, _P.INT8, _P.BOOL})
IO_ONLY_DTYPES = frozenset({_P.UINT8})
# input index that must be a build-time constant, per op type
_CONST_INPUTS = {"ReduceSum": 1, "ReduceMean": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1,
                 "ReduceL1": 1, "ReduceL2": 1, "ReduceLogSum": 1, "ReduceLogSumExp": 1, "ReduceSumSquare": 1,
                 "Squeeze": 1, "Unsqueeze": 1, "CumSum": 1, "TopK": 1}


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
               f"{sum(self.op_counts.values())} nodes, {len(self.op_counts)} op types)"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])

    def to_dict(self) -> dict:
        return {"trt_version": TRT_VERSION, "ready": self.ready, "opset": self.opset,
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
    _check_graph(model.graph, counts, problems, top=True)
    return TrtReport(opset=opset, op_counts=dict(counts.most_common()), problems=problems)


def _check_graph(graph: onnx.GraphProto, counts: Counter, problems: list[str], top: bool) -> None:
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    io_names = {v.name for v in (*graph.input, *graph.output)} if top else set()
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
                _check_graph(attr.g, counts, problems, top=False)


def _check_node(node: onnx.NodeProto, constants: set[str], problems: list[str]) -> None:
    label = f"{node.op_type} node {node.name or node.output[0]!r}"
    if node.domain not in STANDARD_DOMAINS:
        problems.append(f"{label} is in domain {node.domain!r}, not the standard ONNX domain")
        return
    if node.op_type not in SUPPORTED_OPS:
        problems.append(f"{label}: op type {node.op_type} is not supported by TensorRT {TRT_VERSION}'s parser")
    index = _CONST_INPUTS.get(node.op_type)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        problems.append(f"{label}: input {index} ({node.input[index]}) must be a build-time constant for TensorRT")
    for attr in node.attribute:
        if attr.name == "to" and node.op_type == "Cast":
            _check_dtype(f"{label} 'to'", attr.i, False, problems)
        if attr.type == onnx.AttributeProto.TENSOR:
            _check_dtype(f"{label} attribute {attr.name}", attr.t.data_type, False, problems)


def _check_dtype(what: str, dtype: int, is_io: bool, problems: list[str]) -> None:
    if dtype == _P.UNDEFINED or dtype in ACCEPTED_DTYPES or (is_io and dtype in IO_ONLY_DTYPES):
        return
    problems.append(f"{what} has dtype {onnx.TensorProto.DataType.Name(dtype)}, which TensorRT {TRT_VERSION} rejects")
