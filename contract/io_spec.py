"""The I/O contract of an exported graph, torch-free: names, dtypes and (symbolic) shapes.

One list of `TensorSpec` drives everything that must agree: the dynamic shapes given to the
exporter, the example inputs it traces with, the manifest's `inputs`/`outputs` and the checks the
runtime (`Manifest.hoe_tensors`, with `bind_shapes`) makes on expert tensors before feeding them.

    input_ids [B,T]  attention_mask [B,P+T]  position_ids [B,T]  router_mix [B,K]
    past_key_values.{i}.key|value [B,Hkv,P,D]  experts.*.packed / routers.*.packed  (E, r, K dynamic)
        ──► logits [B,T,V]  present.{i}.key|value [B,Hkv,P+T,D]
(an int8 KV cache: past/present int8 [B,Hkv,P,D+4], rows of D values and their scale: kv_int8.py)
"""

from __future__ import annotations

from dataclasses import dataclass

from hoe.contract import kv_int8
from hoe.core import packing
from hoe.core.errors import ConfigError, ShapeMismatchError
from hoe.core.packing import SiteGroup

# Symbolic dimension names (docs/FORMAT.md).
BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"
EXPERTS, RANK, ROUTERS = "experts", "rank", "routers"
DYNAMIC_DIMS = (BATCH, SEQUENCE, PAST, TOTAL, EXPERTS, RANK, ROUTERS)

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, ROUTER_MIX, LOGITS = (
    "input_ids", "attention_mask", "position_ids", "router_mix", "logits")
STEP_INPUTS = (INPUT_IDS, ATTENTION_MASK, POSITION_IDS, ROUTER_MIX)  # fed every step, besides KV cache and experts
KV_CACHE = {"past_key": "past_key_values.%d.key", "past_value": "past_key_values.%d.value",
            "present_key": "present.%d.key", "present_value": "present.%d.value"}

Dim = int | str  # a fixed size or a symbolic name


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output."""

    name: str
    dtype: str  # numpy-style name: "int64", "float32", "float16"
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelDims:
    """The fixed sizes of a decoder that the graph I/O depends on."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    dtype: str  # "float32" or "float16": KV cache, logits, experts and routers (routers.mask stays float32)
    kv_cache: str = ""  # "" the cache holds `dtype` rows of D; "int8": rows of D int8 and their scale (kv_int8.py)

    @property
    def kv_dtype(self) -> str:
        return self.kv_cache or self.dtype

    @property
    def kv_width(self) -> int:
        """The cache's last dimension: D, or D + 4 for int8 rows."""
        return kv_int8.row_width(self.head_dim) if self.kv_cache == kv_int8.DTYPE else self.head_dim


def past_names(num_layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for every layer, in graph order."""
    return [KV_CACHE[k] % i for i in range(num_layers) for k in ("past_key", "past_value")]


def present_names(num_layers: int) -> list[str]:
    return [KV_CACHE[k] % i for i in range(num_layers) for k in ("present_key", "present_value")]


def expert_tensor_specs(groups: list[SiteGroup], dtype: str) -> list[TensorSpec]:
    """Specs of the packed expert then router tensors (hoe.core.packing), in graph-input order."""
    return [TensorSpec(name, dtype, shape) for name, shape in packing.symbolic_shapes(groups).items()]


def graph_inputs(dims: ModelDims, hoe_specs: list[TensorSpec] | None) -> list[TensorSpec]:
    """All graph inputs in order; `hoe_specs` None gives the plain base graph (no router_mix, no experts)."""
    kv = (BATCH, dims.num_kv_heads, PAST, dims.kv_width)
    specs = [TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)),
             TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),
             TensorSpec(POSITION_IDS, "int64", (BATCH, SEQUENCE))]
    if hoe_specs is not None:
        specs.append(TensorSpec(ROUTER_MIX, "float32", (BATCH, ROUTERS)))
    specs += [TensorSpec(n, dims.kv_dtype, kv) for n in past_names(dims.num_layers)]
    return specs + list(hoe_specs or [])


def graph_outputs(dims: ModelDims) -> list[TensorSpec]:
    kv = (BATCH, dims.num_kv_heads, TOTAL, dims.kv_width)
    specs = [TensorSpec(LOGITS, dims.dtype, (BATCH, SEQUENCE, dims.vocab_size))]
    return specs + [TensorSpec(n, dims.kv_dtype, kv) for n in present_names(dims.num_layers)]


def bind_shapes(specs: list[TensorSpec], shapes: dict[str, tuple[int, ...]],
                known: dict[str, int] | None = None) -> dict[str, int]:
    """Check actual shapes against specs and return the value of every symbolic dimension.

    A dimension is an int, a symbol ("rank") or a product ("3*experts*rank", checked once its symbols are
    bound by another dimension or by `known`). Raises ShapeMismatchError naming the tensor, the expected
    and the actual shape when a fixed size or a product differs, the rank differs, or one symbol takes two
    values.
    """
    bound: dict[str, int] = dict(known or {})
    where: dict[str, str] = {k: "hoe.json" for k in bound}
    products = []
    for spec in specs:
        if spec.name not in shapes:
            raise ShapeMismatchError(f"tensor {spec.name} is missing; expected shape {list(spec.shape)}")
        actual = tuple(int(d) for d in shapes[spec.name])
        if len(actual) != len(spec.shape):
            raise ShapeMismatchError(f"{spec.name}: expected shape {list(spec.shape)}, got {list(actual)}")
        for want, got in zip(spec.shape, actual):
            if isinstance(want, int) and want != got:
                raise ShapeMismatchError(f"{spec.name}: expected shape {list(spec.shape)}, got {list(actual)}")
            if isinstance(want, str) and "*" in want:
                products.append((spec, want, got, actual))
            elif isinstance(want, str):
                if want in bound and bound[want] != got:
                    raise ShapeMismatchError(
                        f"{spec.name}: dimension '{want}' is {got}, but {where[want]} has {want}={bound[want]}")
                bound.setdefault(want, got)
                where.setdefault(want, spec.name)
    for spec, want, got, actual in products:
        try:
            value = packing.dim_value(want, bound)
        except KeyError as e:
            raise ConfigError(f"{spec.name}: dimension '{want}' needs {e.args[0]!r}, which nothing binds") from e
        if value != got:
            sizes = ", ".join(f"{s}={bound[s]}" for s in packing.dim_symbols(want))
            raise ShapeMismatchError(f"{spec.name}: expected shape {list(spec.shape)} with {sizes}, "
                                     f"got {list(actual)}")
    return bound
