"""The I/O contract of an exported graph, torch-free: names, dtypes and (symbolic) shapes.

One list of `TensorSpec` drives everything that must agree: the dynamic shapes given to the
exporter, the example inputs it traces with, the manifest's `inputs`/`outputs` and the checks the
runtime (or `manifest.swap_experts`) makes on expert tensors before feeding them.

    input_ids [B,T]  attention_mask [B,P+T]  position_ids [B,T]  router_mix [B,K]
    past_key_values.{i}.key|value [B,Hkv,P,D]  experts.* / routers.*  (E, r, K dynamic)
        ──► logits [B,T,V]  present.{i}.key|value [B,Hkv,P+T,D]
"""

from __future__ import annotations

from dataclasses import dataclass

from hoe.core import names
from hoe.core.errors import ShapeMismatchError

# Symbolic dimension names (docs/FORMAT.md).
BATCH, SEQUENCE, PAST, TOTAL = "batch", "sequence", "past_sequence", "total_sequence"
EXPERTS, RANK, ROUTERS = "experts", "rank", "routers"
DYNAMIC_DIMS = (BATCH, SEQUENCE, PAST, TOTAL, EXPERTS, RANK, ROUTERS)

INPUT_IDS, ATTENTION_MASK, POSITION_IDS, ROUTER_MIX, LOGITS = (
    "input_ids", "attention_mask", "position_ids", "router_mix", "logits")
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


def past_names(num_layers: int) -> list[str]:
    """past_key_values.{i}.key, past_key_values.{i}.value for every layer, in graph order."""
    return [KV_CACHE[k] % i for i in range(num_layers) for k in ("past_key", "past_value")]


def present_names(num_layers: int) -> list[str]:
    return [KV_CACHE[k] % i for i in range(num_layers) for k in ("present_key", "present_value")]


def hoe_tensor_names(modules: list[str]) -> list[str]:
    """Expert then router tensor names, the order in which they follow the KV cache in the graph."""
    return names.expert_names(modules) + names.router_names(modules)


def expert_tensor_specs(modules: list[str], features: dict[str, tuple[int, int]], dtype: str) -> list[TensorSpec]:
    """Specs of every expert and router tensor; features: module -> (in_features, out_features)."""
    specs = []
    for name in hoe_tensor_names(modules):
        specs.append(_hoe_spec(name, modules, features, dtype))
    return specs


def _hoe_spec(name: str, modules: list[str], features: dict[str, tuple[int, int]], dtype: str) -> TensorSpec:
    if name == names.ROUTER_MASK:
        return TensorSpec(name, "float32", (ROUTERS, EXPERTS))
    module, kind = name.split(".", 1)[1].rsplit(".", 1)
    d_in, d_out = features[module]
    shape = {"lora_A": (EXPERTS, RANK, d_in), "lora_B": (EXPERTS, d_out, RANK), "scaling": (EXPERTS,),
             "weight": (ROUTERS, EXPERTS, d_in), "bias": (ROUTERS, EXPERTS)}[kind]
    return TensorSpec(name, dtype, shape)


def graph_inputs(dims: ModelDims, hoe_specs: list[TensorSpec] | None) -> list[TensorSpec]:
    """All graph inputs in order; `hoe_specs` None gives the plain base graph (no router_mix, no experts)."""
    kv = (BATCH, dims.num_kv_heads, PAST, dims.head_dim)
    specs = [TensorSpec(INPUT_IDS, "int64", (BATCH, SEQUENCE)),
             TensorSpec(ATTENTION_MASK, "int64", (BATCH, TOTAL)),
             TensorSpec(POSITION_IDS, "int64", (BATCH, SEQUENCE))]
    if hoe_specs is not None:
        specs.append(TensorSpec(ROUTER_MIX, "float32", (BATCH, ROUTERS)))
    specs += [TensorSpec(n, dims.dtype, kv) for n in past_names(dims.num_layers)]
    return specs + list(hoe_specs or [])


def graph_outputs(dims: ModelDims) -> list[TensorSpec]:
    kv = (BATCH, dims.num_kv_heads, TOTAL, dims.head_dim)
    specs = [TensorSpec(LOGITS, dims.dtype, (BATCH, SEQUENCE, dims.vocab_size))]
    return specs + [TensorSpec(n, dims.dtype, kv) for n in present_names(dims.num_layers)]


def bind_shapes(specs: list[TensorSpec], shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Check actual shapes against specs and return the value of every symbolic dimension.

    Raises ShapeMismatchError naming the tensor, the expected and the actual shape when a fixed
    size differs, the rank differs, or one symbolic dimension takes two values.
    """
    bound: dict[str, int] = {}
    where: dict[str, str] = {}
    for spec in specs:
        if spec.name not in shapes:
            raise ShapeMismatchError(f"tensor {spec.name} is missing; expected shape {list(spec.shape)}")
        actual = tuple(int(d) for d in shapes[spec.name])
        if len(actual) != len(spec.shape):
            raise ShapeMismatchError(f"{spec.name}: expected shape {list(spec.shape)}, got {list(actual)}")
        for want, got in zip(spec.shape, actual):
            if isinstance(want, int) and want != got:
                raise ShapeMismatchError(f"{spec.name}: expected shape {list(spec.shape)}, got {list(actual)}")
            if isinstance(want, str):
                if want in bound and bound[want] != got:
                    raise ShapeMismatchError(
                        f"{spec.name}: dimension '{want}' is {got}, but {where[want]} has {want}={bound[want]}")
                bound.setdefault(want, got)
                where.setdefault(want, spec.name)
    return bound
