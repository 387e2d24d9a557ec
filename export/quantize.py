"""Weight precision of the base: a pass over the exported ONNX graph (`hoe export --weights ...`).

Only the base's constant weights change; experts and routers stay graph inputs (swappable, per-row
preferences), activations keep the graph's dtype.

    weights  what the base linear weights (and the tied embedding / lm_head) become
    fp32     unchanged (the graph's own dtype)
    fp16     stored as float16, Cast to the graph dtype in the graph (half the file; runtimes fold the
             Cast at load, so speed is fp32's — use `--dtype fp16` for fp16 compute)
    int8/4   block-wise weight-only quantization along the input dimension K, one scale (and with
             --asymmetric one zero point, with --block-offsets one float offset) per block of
             `block_size` inputs of one output column

    grids (quantize_blocks): absmax (onnxruntime's kernel), for an int8 table absmax/127 (GGUF's Q8_0 grid), and
    with --block-offsets the min-max grid with a float minimum (GGUF's Q4_1): a base converted from a Q4_1
    GGUF (the embedded SmolLM2: Q4_1 linears, a Q8_0 table) is then reproduced exactly at int4. MatMulNBits'
    zero points are integers (float ones fall back to a dequantizing kernel, ~50x slower), so the offset is a
    correction beside the product (`_offset_product`):
      MatMul(x, W) ─► MatMulNBits(x, [levels | S]) ─► Split ─► y₀ + (x·S)·offsetsᵀ   (S: block indicators)

    target ort-cpu / ort-cuda (onnxruntime contrib ops, com.microsoft):
      MatMul(x, W[K,N])          ─► MatMulNBits(x, B[N,K/bs,blob], scales[N,K/bs], zp?)
      tied table E[V,D]: Gather  ─► GatherBlockQuantized(B as [V, D·bits/8], ids, scales, zp?)
                         lm_head ─► MatMulNBits(x, B, scales, zp?)   (the SAME packed initializers)
    target tensorrt (standard ONNX, opset >= 21 for block-wise DequantizeLinear, int4 symmetric only):
      MatMul(x, W[K,N])          ─► MatMul(x, DequantizeLinear(Q int4 [K,N], scales [K/bs,N], axis 0))
      tied table E[V,D]          ─► DequantizeLinear(Q int4 [V,D], scales [V,D/bs], axis 1) ─► Gather, Gemm

The int4 absmax and integer zero-point values come from onnxruntime's own block quantizer (the C++ kernels
behind `onnxruntime.quantization.matmul_nbits_quantizer`: `quantize_matmul_4bits` / `_8bits`); the numpy grids
write the same MatMulNBits layout. `BlockQuant.dequantize` turns them back into the
float weight the graph computes with; `dequantize_reference` installs exactly those weights in a
PyTorch model, so export validation compares the graph with a reference holding identical weights.

Which weights are touched is decided by one rule, shared by both sides: every float MatMul whose
right operand is a 2-D initializer [K, N] (every nn.Linear, lm_head included), a Gemm with transB=1 on
a 2-D initializer (the tied lm_head, see optimize.py), and a Gather on axis 0 of a 2-D initializer
(the embedding) when D is a multiple of the block size (GatherBlockQuantized needs whole blocks).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
from hoe.contract.manifest import experts_baked
from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError

from .projections import packed_linears

log = logging.getLogger(__name__)

WEIGHTS = ("fp32", "fp16", "int8", "int4")
TARGETS = ("ort-cpu", "ort-cuda", "tensorrt")
BITS = {"int8": 8, "int4": 4}
DQ_OPSET = 21  # block-wise DequantizeLinear (block_size attribute, int4 type)
MS_DOMAIN = "com.microsoft"
OFFSETS_SUFFIX = "_offsets"  # the [k_blocks, N] initializer of a projection with block offsets


@dataclass
class QuantConfig(JsonConfig):
    """How the base's weights are stored (see the module docstring)."""

    weights: str = "fp32"  # fp32 | fp16 | int8 | int4
    block_size: int = 32  # inputs per scale (power of two >= 16, MatMulNBits' rule)
    symmetric: bool = True  # False: a uint zero point per block too
    accuracy_level: int = 4  # MatMulNBits: 0 = fp32 activations (exact), 4 = int8 activations (fastest on CPU)
    target: str = "ort-cpu"  # ort-cpu | ort-cuda | tensorrt
    table: str = ""  # the embedding table and a tied lm_head: "" = as `weights`, or one of WEIGHTS
    offsets: bool = False  # min-max grid, a float offset per block (module docstring); not the table

    def __post_init__(self) -> None:
        if self.table and self.table not in WEIGHTS:
            raise ConfigError(f"table must be '' or one of {list(WEIGHTS)}, got {self.table!r}")
        if self.table and self.weights == "fp32" and self.table != "fp32":
            raise ConfigError("a table precision needs quantized weights too (--weights)")
        if self.weights not in WEIGHTS:
            raise ConfigError(f"weights must be one of {list(WEIGHTS)}, got {self.weights!r}")
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two >= 16, got {self.block_size}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"accuracy_level must be 0..4 (MatMulNBits), got {self.accuracy_level}")
        if self.target == "tensorrt" and self.weights == "int8":
            raise ConfigError("int8 weights are not offered for the tensorrt target: TensorRT 10 block-quantizes "
                              "INT4 weights only (use --weights int4, or fp16)")
        if self.target == "tensorrt" and self.quantized and not self.symmetric:
            raise ConfigError("the tensorrt target needs --symmetric: TensorRT's DequantizeLinear requires zero "
                              "points of 0")
        if self.offsets and (self.form != "MatMulNBits" or not self.symmetric):
            raise ConfigError(f"block offsets need int8/int4 weights on an onnxruntime target and no --asymmetric "
                              f"(the offset replaces the zero point), got weights {self.weights!r}, target "
                              f"{self.target!r}, symmetric {self.symmetric}")
        if self.table:
            self.table_config()  # the table's precision obeys the same rules

    @classmethod
    def section_fields(cls, section: dict) -> dict:
        """The fields of this config that a manifest's `quantization` section records (absent ones left out)."""
        return {f.name: section[f.name] for f in dataclasses.fields(cls) if section.get(f.name) is not None}

    def table_config(self) -> QuantConfig:
        """The precision of the embedding table / tied lm_head."""
        return QuantConfig(**{**self.to_dict(), "weights": self.table or self.weights, "table": "", "offsets": False})

    @property
    def quantized(self) -> bool:
        return self.weights in BITS

    @property
    def bits(self) -> int:
        return BITS[self.weights]

    @property
    def form(self) -> str:
        """The graph form of a quantized weight: MatMulNBits (ort targets) or DequantizeLinear (tensorrt)."""
        if self.weights == "fp16":
            return "Cast"
        if not self.quantized:
            return "none"
        return "DequantizeLinear" if self.target == "tensorrt" else "MatMulNBits"


# ---------------------------------------------------------------------------- the quantization math


@dataclass
class BlockQuant:
    """W [K, N] quantized along K in blocks, in MatMulNBits' layout.

    level q ∈ [0, 2^bits), zero point z (2^(bits-1) when symmetric), W ≈ (q - z) · scale (+ offset).
    """

    packed: np.ndarray  # uint8 [N, k_blocks, block_size·bits/8], low bits first
    scales: np.ndarray  # [N, k_blocks], the weight's float dtype
    zero_points: np.ndarray | None  # uint8 [N, ceil(k_blocks·bits/8)] packed like `packed`; None = symmetric
    bits: int
    block_size: int
    k: int  # K (rows of W)
    offsets: np.ndarray | None = None  # [N, k_blocks] in the scales' dtype, added to every weight of the block

    @property
    def n(self) -> int:
        return self.packed.shape[0]

    @property
    def k_blocks(self) -> int:
        return self.packed.shape[1]

    def levels(self) -> np.ndarray:
        """Unpacked levels q: uint8 [N, k_blocks·block_size] (columns >= K are padding)."""
        return _unpack(self.packed.reshape(self.n, -1), self.bits)

    def zeros(self) -> np.ndarray:
        """Zero point per block: int [N, k_blocks]."""
        if self.zero_points is None:
            return np.full((self.n, self.k_blocks), 1 << (self.bits - 1), dtype=np.int32)
        return _unpack(self.zero_points, self.bits)[:, : self.k_blocks].astype(np.int32)

    def dequantize(self) -> np.ndarray:
        """(q - z) · scale (+ offset) as W's layout [K, N], in the scales' dtype (what the graph computes with)."""
        q = self.levels().astype(np.int32).reshape(self.n, self.k_blocks, self.block_size)
        w = (q - self.zeros()[:, :, None]).astype(np.float32) * self.scales.astype(np.float32)[:, :, None]
        if self.offsets is not None:
            w += self.offsets.astype(np.float32)[:, :, None]
        return np.ascontiguousarray(w.reshape(self.n, -1)[:, : self.k].T).astype(self.scales.dtype)

    def signed_levels(self) -> np.ndarray:
        """Symmetric levels q - z as int8 [N, K] (what a DequantizeLinear int4/int8 tensor holds)."""
        return (self.levels()[:, : self.k].astype(np.int16) - (1 << (self.bits - 1))).astype(np.int8)

    def block_sums(self) -> BlockQuant:
        """S [K, k_blocks] with S[k, j] = 1 when input k lies in block j: x·S are x's block sums (what the offsets
        multiply), on the same grid (symmetric, scale 1), so its columns can join this weight's in one MatMulNBits."""
        z = 1 << (self.bits - 1)
        q = np.full((self.k_blocks, self.k_blocks, self.block_size), z, dtype=np.uint8)
        q[np.arange(self.k_blocks), np.arange(self.k_blocks)] = z + 1
        q.reshape(self.k_blocks, -1)[:, self.k:] = z  # padding inputs past K
        ones = np.ones((self.k_blocks, self.k_blocks), dtype=self.scales.dtype)
        return BlockQuant(pack_levels(q, self.bits), ones, None, self.bits, self.block_size, self.k)


def quantize_blocks(w: np.ndarray, bits: int, block_size: int, symmetric: bool, offsets: bool = False,
                    table: bool = False) -> BlockQuant:
    """W [K, N] (float32/float16) -> BlockQuant on one of three grids:

    offsets                    min-max: scale = (max - min) / (2^bits - 1), offset = min + 2^(bits-1)·scale
                               (GGUF's Q4_1/Q5_1 grid: weights already on such a grid come back exactly)
    table, 8 bits, symmetric   absmax: scale = max|w| / 127 (GGUF's Q8_0 grid, exact on a Q8_0 embedding)
    otherwise                  onnxruntime's MatMulNBits quantizer kernels (absmax / min-max with a uint zero
                               point). Not absmax/127 for other int8 weights: with lora_B on it the SmolLM2
                               baked int4 graph landed 0.006 from float64 against 0.0018 (validation failed)
    """
    if w.ndim != 2:
        raise ConfigError(f"block quantization takes a 2-D weight [K, N], got shape {w.shape}")
    if bits not in (4, 8):
        raise ConfigError(f"bits must be 4 or 8, got {bits}")
    dtype = np.float16 if w.dtype == np.float16 else np.float32
    w = np.ascontiguousarray(w, dtype=dtype)
    if offsets:
        return _minmax_blocks(w, bits, block_size)
    if table and bits == 8 and symmetric:
        return _absmax8_blocks(w, block_size)
    return _ort_blocks(w, bits, block_size, symmetric)


def _ort_blocks(w: np.ndarray, bits: int, block_size: int, symmetric: bool) -> BlockQuant:
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    kernel = {4: quantize_matmul_4bits, 8: quantize_matmul_8bits}[bits]
    k, n = w.shape
    k_blocks = -(-k // block_size)
    packed = np.zeros((n, k_blocks, block_size * bits // 8), dtype=np.uint8)
    zero_points = np.zeros((n, -(-k_blocks * bits // 8)), dtype=np.uint8)
    scales = np.zeros((n, k_blocks), dtype=w.dtype)
    kernel(packed, w, scales, zero_points, block_size, n, k, symmetric)
    return BlockQuant(packed, scales, None if symmetric else zero_points, bits, block_size, k)


def _absmax8_blocks(w: np.ndarray, block_size: int) -> BlockQuant:
    b = _as_blocks(w, block_size)  # [N, k_blocks, block]
    scale = np.abs(b).max(axis=-1) / 127
    q = np.round(b / np.where(scale == 0, 1, scale)[..., None]) + 128
    return BlockQuant(q.astype(np.uint8), scale.astype(w.dtype), None, 8, block_size, w.shape[0])


def _minmax_blocks(w: np.ndarray, bits: int, block_size: int) -> BlockQuant:
    b = _as_blocks(w, block_size)
    lo, hi = b.min(axis=-1), b.max(axis=-1)
    scale = (hi - lo) / ((1 << bits) - 1)
    q = np.round((b - lo[..., None]) / np.where(scale == 0, 1, scale)[..., None])
    offsets = lo + (1 << (bits - 1)) * scale  # (q - z)·scale + offset = q·scale + min
    return BlockQuant(pack_levels(q.astype(np.uint8), bits), scale.astype(w.dtype), None, bits, block_size, w.shape[0],
                      offsets.astype(w.dtype))


def _as_blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    """W [K, N] -> float32 [N, k_blocks, block_size], K padded with zeros."""
    k, n = w.shape
    k_blocks = -(-k // block_size)
    b = np.zeros((n, k_blocks * block_size), dtype=np.float32)
    b[:, :k] = w.T
    return b.reshape(n, k_blocks, block_size)


def pack_levels(q: np.ndarray, bits: int) -> np.ndarray:
    """uint8 levels [..., C] -> MatMulNBits bytes [..., C·bits/8] (low bits first)."""
    return q if bits == 8 else (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def round_trip(w: np.ndarray, cfg: QuantConfig, table: bool = False) -> np.ndarray:
    """W [K, N] as the graph of `cfg` stores it (table: the embedding / tied lm_head), back in W's dtype: what
    the reference computes with."""
    if cfg.weights == "fp16":
        return w.astype(np.float16).astype(w.dtype)
    if not cfg.quantized:
        return w
    q = quantize_blocks(w, cfg.bits, cfg.block_size, cfg.symmetric, cfg.offsets, table)
    return q.dequantize().astype(w.dtype)


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [R, C] -> uint8 [R, C·8/bits] (low bits first)."""
    if bits == 8:
        return packed
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], -1)


def embedding_quantizable(d: int, cfg: QuantConfig) -> bool:
    """The embedding table [V, D] is quantized when D is whole blocks (GatherBlockQuantized's rule)."""
    return cfg.quantized and d % cfg.block_size == 0 or cfg.weights == "fp16"


# ---------------------------------------------------------------------------- the graph pass


def quantize_model(model, cfg: QuantConfig) -> dict:
    """Rewrite `model` (onnx_ir.Model) in place. Returns the manifest's `quantization` section."""
    report = {**cfg.to_dict(), "form": cfg.form, "linear": 0, "lm_head": None, "embedding": None}
    report["table"] = cfg.table or cfg.weights
    if cfg.weights != "fp32":
        _GraphQuantizer(model, cfg, report).run()
    if cfg.quantized:
        report["bits"] = cfg.bits
        report["scale_dtype"] = report.pop("_scale_dtype", None)
        report["quantizer"] = _quantizer_version()
    if not cfg.quantized:
        report.pop("accuracy_level")
    return report


class _GraphQuantizer:
    def __init__(self, model, cfg: QuantConfig, report: dict) -> None:
        self.model, self.graph, self.cfg, self.report = model, model.graph, cfg, report
        self.tcfg = cfg.table_config()  # the embedding table / tied lm_head
        self.tables: dict[str, BlockQuant] = {}  # tied/embedding tables quantized as [V,D] rows, by initializer name
        self.values: dict[tuple, object] = {}  # shared new initializers / DQ outputs
        self.tied: dict[str, bool] = {}  # embedding table -> also read by another node (the tied lm_head)
        self.count = 0

    def run(self) -> None:
        plan = []  # decided on the unmodified graph: rewriting one use of a table must not hide another
        for node in self.graph:
            if node.domain not in ("", "ai.onnx"):
                continue
            if node.op_type == "MatMul" and self._weight(node.inputs[1]) is not None:
                plan.append((self._matmul, node, node.inputs[1]))
            elif node.op_type == "Gemm" and self.tcfg.weights != "fp32" and self._is_tied_head(node):
                plan.append((self._lm_head, node, node.inputs[1]))
            elif node.op_type == "Gather" and self._is_embedding(node):
                self.tied[node.inputs[0].name] = len(node.inputs[0].uses()) > 1
                plan.append((self._embedding, node, node.inputs[0]))
        for rewrite, node, weight in plan:
            rewrite(node, weight)
        for name in [n for n, v in self.graph.initializers.items() if not v.uses()]:
            self.graph.initializers.pop(name)
        if "MatMulNBits" in (self.cfg.form, self.tcfg.form):
            self.model.opset_imports[MS_DOMAIN] = 1
        if "DequantizeLinear" in (self.cfg.form, self.tcfg.form) and self.model.opset_imports.get("", 0) < DQ_OPSET:
            log.info("raising the opset to %d for block-wise DequantizeLinear", DQ_OPSET)
            self.model.opset_imports[""] = DQ_OPSET

    # -- matching ----------------------------------------------------------------------------------
    def _weight(self, value):
        """A 2-D float initializer's array, else None."""
        if value is None or value.const_value is None or self.graph.initializers.get(value.name) is not value:
            return None
        array = value.const_value.numpy()
        return array if array.ndim == 2 and array.dtype in (np.float32, np.float16) else None

    def _is_tied_head(self, node) -> bool:
        attrs = node.attributes
        plain = all(attrs[a].as_float() == 1.0 for a in ("alpha", "beta") if a in attrs)
        return (len(node.inputs) == 2 and plain and "transB" in attrs and attrs["transB"].as_int() == 1
                and not ("transA" in attrs and attrs["transA"].as_int()) and self._weight(node.inputs[1]) is not None)

    def _is_embedding(self, node) -> bool:
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        table = self._weight(node.inputs[0])
        return axis == 0 and table is not None and embedding_quantizable(table.shape[1], self.tcfg)

    # -- rewrites ----------------------------------------------------------------------------------
    def _matmul(self, node, w) -> None:
        if self.cfg.weights == "fp16":
            self._cast_uses(w)
        elif self.cfg.form == "MatMulNBits":
            q = quantize_blocks(w.const_value.numpy(), self.cfg.bits, self.cfg.block_size, self.cfg.symmetric,
                                self.cfg.offsets)
            if q.offsets is None:
                self._replace(node, self._nbits(node.inputs[0], q, self._init_set(w.name, q)))
            else:
                self._offset_product(node, q, w.name)
        else:
            q = quantize_blocks(w.const_value.numpy(), self.cfg.bits, self.cfg.block_size, self.cfg.symmetric)
            self._dq_uses(w, q, axis=0)
        self.report["linear"] += packed_linears(w)  # a packed projection holds several (projections.py)

    def _offset_product(self, node, q: BlockQuant, name: str) -> None:
        """x·W with W = (q - z)·scale + offset per block:

            MatMulNBits(x, [levels | block indicators S]) ─► Split ─► y₀ [.., N], x·S [.., k_blocks]
            y = y₀ + (x·S) · offsetsᵀ        (one fp32 MatMul [k_blocks, N] and an Add)

        S rides in the same product (k_blocks extra columns on the same grid), so the block sums see the very
        activations the levels do (int8 ones at accuracy_level 4) and x·W is exact at any level."""
        s = q.block_sums()
        fused = BlockQuant(np.concatenate([q.packed, s.packed]), np.concatenate([q.scales, s.scales]), None,
                           q.bits, q.block_size, q.k)
        product = self._nbits(node.inputs[0], fused, self._init_set(name, fused))
        widths = self._init(f"{name}_widths", np.array([q.n, q.k_blocks], np.int64), key=("widths", name))
        split = self._node("Split", [product.outputs[0], widths], num_outputs=2, axis=-1)
        offsets = self._init(f"{name}{OFFSETS_SUFFIX}", np.ascontiguousarray(q.offsets.T), key=("offsets", name))
        correction = self._node("MatMul", [split.outputs[1], offsets])
        add = self._node("Add", [split.outputs[0], correction.outputs[0]])
        self.graph.insert_before(node, [product, split, correction])
        self._replace(node, add)

    def _lm_head(self, node, table) -> None:
        if self.tcfg.weights == "fp16":
            self._cast_uses(table)
        elif self.tcfg.form == "MatMulNBits":
            q = self._table(table)
            self._replace(node, self._nbits(node.inputs[0], q, self._init_set(table.name, q)))
        else:
            self._dq_uses(table, self._table(table), axis=1)
        self.report["linear"] += 1
        op = {"MatMulNBits": "MatMulNBits", "Cast": "Gemm (Cast)"}.get(self.tcfg.form, "Gemm")
        self.report["lm_head"] = {"tied": True, "weights": self.tcfg.weights, "op": op}

    def _embedding(self, node, table) -> None:
        tied = self.tied[table.name]
        if self.tcfg.weights == "fp16":
            self._cast_uses(table)
            op = "Gather (Cast)"
        elif self.tcfg.form == "MatMulNBits":
            op = "GatherBlockQuantized"
            q = self._table(table)
            packed, scales, zp = self._init_set(table.name, q)  # the lm_head's, when tied
            # [V, k_blocks, blob] -> [V, D·bits/8]: same bytes; onnxruntime folds the Reshape at load, so the
            # file holds the table once (MatMulNBits insists on its 3-D shape, GatherBlockQuantized on 2-D)
            shape = self._init(f"{table.name}_gbq_shape", np.array([q.n, -1], dtype=np.int64), key=("shape", q.n))
            data = self._node("Reshape", [packed, shape])
            self.graph.insert_before(node, data)
            inputs = [data.outputs[0], node.inputs[1], scales] + ([zp] if zp is not None else [])
            self._replace(node, self._node("GatherBlockQuantized", inputs, MS_DOMAIN, gather_axis=0, quantize_axis=1,
                                           block_size=self.tcfg.block_size, bits=self.tcfg.bits))
        else:
            op = "Gather (DequantizeLinear)"
            self._dq_uses(table, self._table(table), axis=1)
        self.report["embedding"] = {"op": op, "tied": tied, "weights": self.tcfg.weights}

    def _table(self, table) -> BlockQuant:
        """A [V, D] table quantized per row along D (the lm_head's K), once per initializer."""
        if table.name not in self.tables:
            w = np.ascontiguousarray(table.const_value.numpy().T)  # [D, V] = [K, N]
            self.tables[table.name] = quantize_blocks(w, self.tcfg.bits, self.tcfg.block_size, self.tcfg.symmetric,
                                                      table=True)
        return self.tables[table.name]

    # -- building blocks ---------------------------------------------------------------------------
    def _init(self, name: str, array: np.ndarray, key: tuple):
        import onnx_ir as ir

        if key not in self.values:
            v = ir.Value(name=name, const_value=ir.tensor(array, name=name))
            self.graph.register_initializer(v)
            self.values[key] = v
        return self.values[key]

    def _init_set(self, name: str, q: BlockQuant):
        """(B, scales, zero_points | None) initializers of one quantized weight, shared by name."""
        self.report["_scale_dtype"] = str(q.scales.dtype)
        packed = self._init(f"{name}_q{q.bits}", q.packed, key=("B", name))
        scales = self._init(f"{name}_scales", q.scales, key=("scales", name))
        zp = None if q.zero_points is None else self._init(f"{name}_zp", q.zero_points, key=("zp", name))
        return packed, scales, zp

    def _nbits(self, x, q: BlockQuant, inits):
        packed, scales, zp = inits
        attrs = dict(K=q.k, N=q.n, bits=q.bits, block_size=q.block_size)
        if self.cfg.accuracy_level:
            attrs["accuracy_level"] = self.cfg.accuracy_level
        return self._node("MatMulNBits", [x, packed, scales] + ([zp] if zp is not None else []), MS_DOMAIN, **attrs)

    def _node(self, op_type: str, inputs: list, domain: str = "", num_outputs: int = 1, **attrs):
        import onnx_ir as ir

        self.count += 1
        return ir.Node(domain, op_type, inputs, num_outputs=num_outputs, name=f"quant/{op_type}_{self.count}",
                       attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()])

    def _replace(self, old, new) -> None:
        self.graph.insert_before(old, new)
        out = old.outputs[0]
        out.replace_all_uses_with(new.outputs[0], replace_graph_outputs=True)
        new.outputs[0].name, out.name = out.name, None
        self.graph.remove(old, safe=True)

    def _first_node(self):
        return next(iter(self.graph))

    def _cast_uses(self, w) -> None:
        """W -> Cast(W as float16) for every consumer (once per initializer)."""
        import onnx_ir as ir

        if ("cast", w.name) in self.values or w.const_value.dtype == ir.DataType.FLOAT16:
            return
        w16 = self._init(f"{w.name}_fp16", w.const_value.numpy().astype(np.float16), key=("fp16", w.name))
        cast = self._node("Cast", [w16], to=w.const_value.dtype)
        self.graph.insert_before(self._first_node(), cast)
        w.replace_all_uses_with(cast.outputs[0])
        cast.outputs[0].name = f"{w.name}_cast"
        self.values[("cast", w.name)] = cast.outputs[0]

    def _dq_uses(self, w, q: BlockQuant, axis: int) -> None:
        """W -> DequantizeLinear(int4 levels, scales, axis, block_size) for every consumer (once per initializer).

        axis 0: W is [K, N] (a MatMul weight); axis 1: W is a [V, D] table (blocks along D)."""
        import ml_dtypes

        if ("dq", w.name) in self.values:
            return
        levels = q.signed_levels()  # [N, K]
        scales = q.scales  # [N, k_blocks]
        if axis == 0:
            levels, scales = levels.T, scales.T  # [K, N], [k_blocks, N]
        dtype = ml_dtypes.int4 if q.bits == 4 else np.int8
        data = self._init(f"{w.name}_q{q.bits}", np.ascontiguousarray(levels).astype(dtype), key=("dq-data", w.name))
        sc = self._init(f"{w.name}_scales", np.ascontiguousarray(scales), key=("dq-scales", w.name))
        dq = self._node("DequantizeLinear", [data, sc], axis=axis, block_size=q.block_size)
        self.graph.insert_before(self._first_node(), dq)
        w.replace_all_uses_with(dq.outputs[0])
        dq.outputs[0].name = f"{w.name}_dq"
        self.values[("dq", w.name)] = dq.outputs[0]
        self.report["_scale_dtype"] = str(q.scales.dtype)


def offset_split(product):
    """The Split after a MatMulNBits `product` of `_offset_product` (outputs y₀ and x·S), else None."""
    uses = product.outputs[0].uses()
    split = uses[0].node if len(uses) == 1 else None
    if split is None or split.op_type != "Split" or len(split.outputs) != 2:
        return None
    readers = [u.node for u in split.outputs[1].uses()]
    offsets = readers[0].inputs[1] if len(readers) == 1 and readers[0].op_type == "MatMul" else None
    return split if offsets is not None and offsets.name.endswith(OFFSETS_SUFFIX) else None


def _quantizer_version() -> str:
    from importlib.metadata import version

    return f"hoe grids; int4 absmax and zero points: onnxruntime {version('onnxruntime')} quantize_matmul_Nbits"


# ---------------------------------------------------------------------------- the reference side


def dequantize_reference(model, quant: dict | None) -> int:
    """Give a PyTorch causal LM (or HoEModel) the weights the quantized graph computes with, in place.

    `quant` is the manifest's `quantization` section. Every nn.Linear weight W [out, in] becomes
    round_trip(Wᵀ)ᵀ (lm_head included); the input embedding too when the graph quantized it. A tied
    lm_head whose embedding stayed float is untied. Returns how many linears were changed (the graph's
    `quantization.linear` must be the same).
    """
    import torch
    from torch import nn

    if not quant:
        return 0
    if quant.get("weights", "fp32") == "fp32":  # the base as it is; experts baked into an fp32 graph may be int8
        if experts_baked(quant):
            _dequantize_experts(model, quant)
        return 0
    cfg = QuantConfig(**QuantConfig.section_fields(quant))
    tcfg = cfg.table_config()
    lm = getattr(model, "model", model)  # HoEModel wraps the causal LM
    embed = lm.get_input_embeddings()
    head = lm.get_output_embeddings()
    done: dict[int, torch.Tensor] = {}

    def new_weight(param: torch.Tensor, table: bool = False) -> torch.Tensor:
        """The graph's weight for `param`: a linear's, or (table) the embedding / tied lm_head's."""
        if id(param) not in done:
            w = param.detach().float().numpy().T  # [in, out] = [K, N]
            if quant.get("scale_dtype") == "float16":  # an fp16 graph quantized its fp16 weights
                w = w.astype(np.float16)
            dq = round_trip(w, tcfg, table=True) if table else round_trip(w, cfg)
            done[id(param)] = torch.from_numpy(np.ascontiguousarray(dq.T).astype(np.float32)).to(param.dtype)
        return done[id(param)]

    linears = [m for m in lm.modules() if isinstance(m, nn.Linear)]
    tied = head is not None and embed is not None and head.weight is embed.weight
    quantize_embed = quant.get("embedding") is not None
    quantize_head = not tied or quant.get("lm_head") is not None  # a tied head follows the table
    with torch.no_grad():
        if tied and quantize_head and not quantize_embed:
            head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        changed = 0
        for m in linears:
            if m is head and tied:
                if quantize_head:
                    m.weight.copy_(new_weight(m.weight, table=True))
                    changed += 1
                continue
            m.weight.copy_(new_weight(m.weight))
            changed += 1
        if quantize_embed and not (tied and quantize_head):
            embed.weight.copy_(new_weight(embed.weight, table=True))
        if experts_baked(quant):
            _dequantize_experts(model, quant)
    return changed


def _dequantize_experts(model, quant: dict) -> None:
    """A HoEModel gets the dequantized experts and routers of a baked graph (baked.round_trip_experts)."""
    import torch

    from .baked import round_trip_experts

    if not hasattr(model, "named_tensors"):
        raise ConfigError("the graph holds baked experts but the reference model has none (a plain base model)")
    tensors = {n: t.detach().float().numpy() for n, t in model.named_tensors().items()}
    dtype = np.float16 if quant.get("scale_dtype") == "float16" else np.float32
    new = round_trip_experts(tensors, list(model.config.target_modules), quant["experts"], dtype)
    for name, param in model.named_tensors().items():
        param.copy_(torch.from_numpy(new[name]).to(param.dtype))


def quantized_form(manifest: dict) -> str:
    """The manifest's quantization form: none | Cast | MatMulNBits | DequantizeLinear."""
    return (manifest.get("quantization") or {}).get("form", "none")


def exact_accuracy_model(path) -> bytes | None:
    """model.onnx with every MatMulNBits (and hoe's MatMulInt4, MatMulInt4Mixture) at accuracy_level 0, serialized
    (external data not read), or None when the graph has none at another level.
    Used by validation: the same graph, fp32 activations."""
    import onnx
    from hoe.runtime.kernels import FUSED_OP, LINEAR_OP, MIXTURE_DOMAIN

    model = onnx.load(str(path), load_external_data=False)
    changed = False
    products = (("MatMulNBits", MS_DOMAIN), (LINEAR_OP, MIXTURE_DOMAIN), (FUSED_OP, MIXTURE_DOMAIN))
    for node in model.graph.node:
        if (node.op_type, node.domain) not in products:
            continue
        for attr in node.attribute:
            if attr.name == "accuracy_level" and attr.i != 0:
                attr.i = 0  # MatMulInt4 requires the attribute; MatMulNBits' default is 0 too
                changed = True
    return model.SerializeToString() if changed else None
