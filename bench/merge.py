"""`merged`: the Rewarded-Soups way of serving a preference, baked into the base-shaped graph.

    λ ─► expert weights w = argmin_{w ∈ Δ} ‖Σ_j w_j·pref_j − λ‖   (one-hot experts: w = λ)
      ─► every adapted module: W(λ) = W_pre + Σ_j w_j·s_j·B_j·A_j        (numpy, fp32)
      ─► base-ort's model.onnx with those initializers overridden (SessionOptions.add_initializer)

So `merged` decodes exactly like `base-ort` (same graph, other numbers), but a new preference means
re-merging every module and building a new session; `Merger.remerge` times both parts.

The exporter may store a linear's weight under an anonymous name and transposed ([in, out], folded by
the ONNX optimiser), so adapted weights are found by content: each module's W_pre (from the Hugging Face
base folder) is matched byte for byte against the graph's 2-D initializers, as stored or transposed, or as a
column block of a packed projection's Wᵀ [in, Σout] (export/projections.py: q/k/v and gate/up share one).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hoe.core import names
from hoe.core.errors import CheckpointError, ShapeMismatchError
from hoe.core.routing import simplex_lstsq, validate_preference
from hoe.runtime.backends.ort import OrtBackend

log = logging.getLogger(__name__)

_NP_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class Slot:
    """Where one adapted module's weight lives in the base graph."""

    initializer: str
    transposed: bool  # True: stored as Wᵀ [in, out]
    columns: tuple[int, int] | None = None  # packed projection: Wᵀ is initializer[:, start:stop]


def read_initializers(onnx_path: str | Path, ndim: int = 2) -> dict[str, np.ndarray]:
    """Float initializers of rank `ndim` by name, read from the model and its external data file."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    out = {}
    for init in model.graph.initializer:
        if len(init.dims) != ndim or init.data_type not in _NP_TYPES:
            continue
        if init.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in init.external_data}
            dtype = _NP_TYPES[init.data_type]
            count = int(np.prod(init.dims))
            arr = np.fromfile(onnx_path.parent / info["location"], dtype=dtype, count=count,
                              offset=int(info.get("offset", 0)))
            out[init.name] = arr.reshape(tuple(init.dims))
        else:
            out[init.name] = numpy_helper.to_array(init)
    return out


def _digest(arr: np.ndarray) -> tuple:
    return arr.shape, arr.dtype.str, hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def locate_weights(initializers: dict[str, np.ndarray], base_weights: dict[str, np.ndarray]) -> dict[str, Slot]:
    """module -> Slot, by exact content. base_weights: module -> W_pre [out, in]."""
    index: dict[tuple, list[str]] = {}
    for name, arr in initializers.items():
        index.setdefault(_digest(arr), []).append(name)
    slots = {}
    for module, w in base_weights.items():
        found = [(n, False) for n in index.get(_digest(w), [])] + [(n, True) for n in index.get(_digest(w.T), [])]
        found = found or _packed_blocks(initializers, w)
        if len(found) != 1:
            raise CheckpointError(
                f"{module}: expected exactly one initializer of the base graph equal to its weight {list(w.shape)} "
                f"(as stored or transposed), found {len(found)}: {[n for n, _ in found][:4]}")
        slots[module] = Slot(*found[0])
    return slots


def _packed_blocks(initializers: dict[str, np.ndarray], w: np.ndarray) -> list[tuple[str, bool, tuple[int, int]]]:
    """(name, True, (start, stop)) for every initializer [in, N > out] holding Wᵀ [in, out] as a column block."""
    wt = w.T
    found = []
    for name, arr in initializers.items():
        if arr.shape[0] != wt.shape[0] or arr.shape[1] <= wt.shape[1] or arr.dtype != wt.dtype:
            continue
        starts = np.flatnonzero(arr[0, :arr.shape[1] - wt.shape[1] + 1] == wt[0, 0])  # cheap: one row first
        found += [(name, True, (int(c), int(c) + wt.shape[1])) for c in starts
                  if np.array_equal(arr[:, c:c + wt.shape[1]], wt)]
    return found


def read_base_weights(base_dir: str | Path, modules: list[str]) -> dict[str, np.ndarray]:
    """W_pre [out, in] of each module from a Hugging Face safetensors folder (numpy, no torch)."""
    from safetensors import safe_open

    base_dir = Path(base_dir)
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{base_dir} holds no *.safetensors weights")
    wanted = {f"{m}.weight": m for m in modules}
    out = {}
    for path in files:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                if key in wanted:
                    out[wanted[key]] = f.get_tensor(key)
    missing = [m for m in modules if m not in out]
    if missing:
        raise CheckpointError(f"{base_dir}: no weights for {len(missing)} adapted modules, e.g. {missing[:3]}")
    return out


class Merger:
    """W_pre and the experts in memory (as Rewarded Soups keeps θ_pre and the τ_j); merges at a preference."""

    def __init__(self, initializers: dict[str, np.ndarray], slots: dict[str, Slot], experts: dict[str, np.ndarray],
                 expert_prefs: list[list[float]]) -> None:
        self.slots = slots
        self.expert_prefs = np.asarray(expert_prefs, dtype=np.float64)  # [E, m]
        self.stored = {s.initializer: initializers[s.initializer] for s in slots.values()}
        self.w_pre = {m: self._block(self.stored[s.initializer], s) for m, s in slots.items()}  # as stored
        self.factors = {m: self._stored_factors(m, experts) for m in slots}

    def _stored_factors(self, module: str, experts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(left [.., E·r], right [E·r, ..], scaling [E]) with left @ diag(g) @ right in the stored orientation."""
        a, b = experts[names.lora_a(module)], experts[names.lora_b(module)]  # [E,r,in], [E,out,r]
        e, r, d_in = a.shape
        a_cat = a.reshape(e * r, d_in).astype(np.float32)  # [E·r, in]
        b_cat = b.transpose(1, 0, 2).reshape(b.shape[1], e * r).astype(np.float32)  # [out, E·r]
        if b_cat.shape[0] * d_in != self.w_pre[module].size:
            raise ShapeMismatchError(f"{module}: experts are [{b_cat.shape[0]}, {d_in}], graph weight is "
                                     f"{list(self.w_pre[module].shape)}")
        scaling = experts[names.scaling(module)].astype(np.float32)
        if self.slots[module].transposed:  # Wᵀ + A_catᵀ diag(g) B_catᵀ
            return np.ascontiguousarray(a_cat.T), np.ascontiguousarray(b_cat.T), scaling
        return b_cat, a_cat, scaling

    def expert_weights(self, preference) -> np.ndarray:
        """w [E]: the preference as a convex mix of the experts' own preferences."""
        pref = validate_preference(preference, self.expert_prefs.shape[1])
        return simplex_lstsq(self.expert_prefs, pref)

    def merged(self, preference) -> dict[str, np.ndarray]:
        """initializer name -> W(λ) in the stored orientation (fp32, or the graph's dtype)."""
        w = self.expert_weights(preference).astype(np.float32)
        out = {}
        for module, (left, right, scaling) in self.factors.items():
            g = np.repeat(w * scaling, left.shape[1] // len(scaling))  # [E·r]
            slot, w_pre = self.slots[module], self.w_pre[module]
            delta = (left * g[None, :]) @ right  # stored orientation, like w_pre
            if slot.initializer not in out:
                out[slot.initializer] = self.stored[slot.initializer].copy()
            self._block(out[slot.initializer], slot)[...] = w_pre + delta.astype(w_pre.dtype, copy=False)
        return out

    @staticmethod
    def _block(stored: np.ndarray, slot: Slot) -> np.ndarray:
        """The module's part of a stored initializer (a view)."""
        return stored if slot.columns is None else stored[:, slot.columns[0]:slot.columns[1]]


class MergedOrtBackend(OrtBackend):
    """The runtime's onnxruntime backend over the base graph, with some initializers overridden."""

    name = "ort-merged"

    def __init__(self, manifest, config, initializers: dict[str, np.ndarray]) -> None:
        super().__init__(manifest, config)
        self.initializers = initializers
        self._values: dict = {}

    def _session_options(self, ort):
        so = super()._session_options(ort)
        # The OrtValues must outlive the session: keep them on the backend.
        self._values = {n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a))
                        for n, a in self.initializers.items()}
        for name, value in self._values.items():
            so.add_initializer(name, value)
        return so


def remerge(merger: Merger, manifest, config, preference) -> tuple[MergedOrtBackend, dict[str, float]]:
    """A runnable merged backend for `preference`, and what it took: {"merge_ms", "session_ms", "total_ms"}."""
    start = time.perf_counter()
    weights = merger.merged(preference)
    merged_at = time.perf_counter()
    backend = MergedOrtBackend(manifest, config, weights).activate()
    end = time.perf_counter()
    times = {"merge_ms": (merged_at - start) * 1e3, "session_ms": (end - merged_at) * 1e3}
    times["total_ms"] = times["merge_ms"] + times["session_ms"]
    return backend, times
