"""The inference layout of experts and routers: checkpoint tensors packed per group of modules (torch-free).

A checkpoint stores one set of tensors per adapted module (names.py). An exported graph reads them packed
per *site group* — the m modules that read the same input x (q/k/v, gate/up, or one module alone) — so
each group costs one lora_A product and one router product per step, with no per-step concatenation:

    experts.{group}.lora_A.packed   [in, m·E·r]   column (i·E + e)·r + j  = A_i[e, j, :]
    experts.{module}.lora_B.packed  [E·r, out]    row e·r + j             = scaling_i[e] · B_i[e, :, j]
    routers.{group}.weight.packed   [in, m·K·E]   column (i·K + k)·E + e  = W_i[k, e, :]
    routers.{group}.bias.packed     [m·K·E]       bias_i[k, e], and -inf where routers.mask[k, e] == 0

`unpack` inverts `pack` up to the folded scaling (it returns scaling 1 and B already scaled, the same
model) and the bias of masked entries (irrelevant to the model: their gate is exactly 0).
Symbolic sizes of packed tensors are products such as "3*experts*rank" (see `dim_value`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import names
from .errors import CheckpointError, ShapeMismatchError

PACKED = ".packed"


@dataclass(frozen=True)
class SiteGroup:
    """Modules that read the same input: `d_in` features in, `d_outs[i]` out of module i."""

    modules: tuple[str, ...]
    d_in: int
    d_outs: tuple[int, ...]

    @property
    def name(self) -> str:
        """`model.layers.0.self_attn.q_proj+k_proj+v_proj` (the module name when alone)."""
        prefix = self.modules[0].rsplit(".", 1)[0] + "."
        if len(self.modules) == 1 or not all(m.startswith(prefix) and "." not in m[len(prefix):]
                                             for m in self.modules):
            return "+".join(self.modules)
        return prefix + "+".join(m[len(prefix):] for m in self.modules)

    def to_dict(self) -> dict:
        return {"name": self.name, "modules": list(self.modules), "d_in": self.d_in, "d_outs": list(self.d_outs)}

    @classmethod
    def from_dict(cls, d: dict) -> SiteGroup:
        return cls(tuple(d["modules"]), int(d["d_in"]), tuple(int(o) for o in d["d_outs"]))


# Packed names are the checkpoint names (names.py) of the group, or of the module for lora_B, plus ".packed".
def lora_a(group: SiteGroup) -> str:
    return names.lora_a(group.name) + PACKED


def lora_b(module: str) -> str:
    return names.lora_b(module) + PACKED


def router_weight(group: SiteGroup) -> str:
    return names.router_weight(group.name) + PACKED


def router_bias(group: SiteGroup) -> str:
    return names.router_bias(group.name) + PACKED


def expert_names(groups: list[SiteGroup]) -> list[str]:
    """Packed expert tensor names, in graph-input order."""
    return [n for g in groups for n in (lora_a(g), *(lora_b(m) for m in g.modules))]


def router_names(groups: list[SiteGroup]) -> list[str]:
    return [n for g in groups for n in (router_weight(g), router_bias(g))]


def symbolic_shapes(groups: list[SiteGroup]) -> dict[str, tuple[int | str, ...]]:
    """name -> shape with symbolic products of experts (E), rank (r) and routers (K), in graph-input order."""

    def times(m: int, dims: str) -> str:
        return dims if m == 1 else f"{m}*{dims}"

    shapes: dict[str, tuple[int | str, ...]] = {}
    for g in groups:
        shapes[lora_a(g)] = (g.d_in, times(len(g.modules), "experts*rank"))
        for module, d_out in zip(g.modules, g.d_outs):
            shapes[lora_b(module)] = ("experts*rank", d_out)
    for g in groups:
        shapes[router_weight(g)] = (g.d_in, times(len(g.modules), "routers*experts"))
        shapes[router_bias(g)] = (times(len(g.modules), "routers*experts"),)
    return shapes


def dim_value(dim: int | str, sizes: dict[str, int]) -> int:
    """Size of a dimension: an int, a symbol ("rank") or a product ("3*experts*rank"). KeyError if unbound."""
    if isinstance(dim, int):
        return dim
    value = 1
    for factor in dim.split("*"):
        value *= int(factor) if factor.isdigit() else int(sizes[factor])
    return value


def dim_symbols(dim: int | str) -> list[str]:
    """The symbols a dimension depends on ([] for an int)."""
    return [] if isinstance(dim, int) else [f for f in dim.split("*") if not f.isdigit()]


# ---------------------------------------------------------------------------- pack / unpack


def pack(tensors: dict[str, np.ndarray], groups: list[SiteGroup], dtype: str | np.dtype) -> dict[str, np.ndarray]:
    """Canonical checkpoint tensors (numpy, names.py) -> packed graph inputs in `dtype`.

    Arithmetic (scaling, mask) in float32, then one cast. Raises CheckpointError for a missing tensor and
    ShapeMismatchError for one whose shape does not fit its group.
    """
    mask = _get(tensors, names.ROUTER_MASK).astype(np.float32)  # [K, E]
    k, e = mask.shape
    mask_bias = np.where(mask > 0, np.float32(0), np.float32(-np.inf))
    r = _get(tensors, names.lora_a(groups[0].modules[0])).shape[1] if groups else 0
    out = {}
    for g in groups:
        a_cols, w_cols, biases = [], [], []
        for module, d_out in zip(g.modules, g.d_outs):
            a = _get(tensors, names.lora_a(module), (e, r, g.d_in)).astype(np.float32)  # [E, r, in]
            b = _get(tensors, names.lora_b(module), (e, d_out, r)).astype(np.float32)  # [E, out, r]
            s = _get(tensors, names.scaling(module), (e,)).astype(np.float32)  # [E]
            w = _get(tensors, names.router_weight(module), (k, e, g.d_in)).astype(np.float32)  # [K, E, in]
            bias = _get(tensors, names.router_bias(module), (k, e)).astype(np.float32)  # [K, E]
            a_cols.append(a.reshape(e * r, g.d_in))
            out[lora_b(module)] = (b * s[:, None, None]).transpose(0, 2, 1).reshape(e * r, d_out)  # [E·r, out]
            w_cols.append(w.reshape(k * e, g.d_in))
            biases.append((bias + mask_bias).reshape(k * e))
        out[lora_a(g)] = np.concatenate(a_cols).T  # [in, m·E·r]
        out[router_weight(g)] = np.concatenate(w_cols).T  # [in, m·K·E]
        out[router_bias(g)] = np.concatenate(biases)  # [m·K·E]
    return {n: np.ascontiguousarray(v.astype(dtype)) for n, v in out.items()}


def unpack(packed: dict[str, np.ndarray], groups: list[SiteGroup], n_experts: int, rank: int,
           n_routers: int) -> dict[str, np.ndarray]:
    """Packed graph inputs -> canonical checkpoint tensors (float32; scaling 1, B scaled; see module doc)."""
    e, r, k = n_experts, rank, n_routers
    out: dict[str, np.ndarray] = {}
    for g in groups:
        m = len(g.modules)
        a = _get(packed, lora_a(g), (g.d_in, m * e * r)).astype(np.float32)
        w = _get(packed, router_weight(g), (g.d_in, m * k * e)).astype(np.float32)
        bias = _get(packed, router_bias(g), (m * k * e,)).astype(np.float32)
        for i, (module, d_out) in enumerate(zip(g.modules, g.d_outs)):
            out[names.lora_a(module)] = a[:, i * e * r:(i + 1) * e * r].T.reshape(e, r, g.d_in)
            b = _get(packed, lora_b(module), (e * r, d_out)).astype(np.float32)
            out[names.lora_b(module)] = b.reshape(e, r, d_out).transpose(0, 2, 1)
            out[names.scaling(module)] = np.ones(e, dtype=np.float32)
            out[names.router_weight(module)] = w[:, i * k * e:(i + 1) * k * e].T.reshape(k, e, g.d_in)
            bias_i = bias[i * k * e:(i + 1) * k * e].reshape(k, e)
            out[names.router_bias(module)] = np.where(np.isfinite(bias_i), bias_i, 0).astype(np.float32)
            out.setdefault(names.ROUTER_MASK, np.isfinite(bias_i).astype(np.float32))
    return {n: np.ascontiguousarray(v) for n, v in out.items()}


def _get(tensors: dict[str, np.ndarray], name: str, shape: tuple[int | None, ...] | None = None) -> np.ndarray:
    """tensors[name], its shape checked against `shape` (None entries are free)."""
    if name not in tensors:
        raise CheckpointError(f"tensor {name} is missing")
    arr = tensors[name]
    fits = shape is None or (arr.ndim == len(shape) and all(w in (None, a) for w, a in zip(shape, arr.shape)))
    if not fits:
        want = ["*" if w is None else w for w in shape]
        raise ShapeMismatchError(f"{name}: expected shape {want}, got {list(arr.shape)}")
    return arr
