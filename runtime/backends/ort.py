"""onnxruntime backend: one InferenceSession shared by all generators, experts bound once, KV cache handed on.

    activate: session (graph optimisation ALL, threads, spinning, providers)
              experts/routers safetensors -> OrtValues, once
    new_state: an IOBinding per generator; the expert/router OrtValues are bound to it once
    step:      bind input_ids / attention_mask / position_ids / router_mix (small host arrays),
               run, take the logits of the last position, then bind each present.{i} output
               OrtValue as the next step's past_key_values.{i} input (no copy through numpy)

Graphs built for an onnxruntime target (`kv_cache.shared_buffer` in hoe_config.json: fused attention,
docs/GRAPH.md) keep each layer's cache in one preallocated buffer [B,Hkv,C,D] per key and value, bound
as both past input and present output; the attention writes the new columns in place, so a step costs
the same whatever the cache length (no Concat, no copy). C grows by doubling when P+T exceeds it (one
copy, amortised), up to the context length; the logits of a decode step land in one reused buffer.

`InferenceSession.run_with_iobinding` is thread-safe across bindings, so states of different
generators can step concurrently.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from hoe.contract.io_spec import LOGITS
from hoe.contract.io_spec import STEP_INPUTS as _STEP_INPUTS
from hoe.core.errors import BackendError, CheckpointError, ShapeMismatchError

from .. import kernels
from . import ort_providers
from .base import Backend, DecodeState

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bfloat16)": None, "tensor(int32)": np.int32}
MIN_CAPACITY = 256  # first shared KV buffer length (columns); doubled when full


class OrtState(DecodeState):
    def __init__(self, batch: int, binding) -> None:
        super().__init__(batch)
        self.binding = binding
        self.host_inputs: tuple = ()  # host arrays bound this step, kept alive until the next one
        self.capacity = 0  # shared KV buffer: columns allocated
        # the past bound now: standard graphs per layer key, value OrtValues [B,H,P,D]; shared KV buffer
        # graphs per layer key, value host arrays [B,H,C,D] (C = capacity >= P)
        self.kv: list = []
        self.kv_values: list = []  # shared KV buffer: their OrtValues (on the session's device)
        self.logits = None  # decode logits buffer [B,1,V] (host array, OrtValue)


class OrtBackend(Backend):
    name = "ort"

    def _activate(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        names, options = ort_providers.resolve(self.config.providers, ort)
        start = time.perf_counter()
        self.session = _session(ort, self._model_path(), self._session_options(ort), names, options)
        self.load_ms = (time.perf_counter() - start) * 1e3
        self.providers_requested = names
        self.providers_used = self.session.get_providers()
        self.fallback = ort_providers.check_used(names, self.providers_used)
        if self.fallback:
            log.warning(self.fallback)
        self.device = ort_providers.device_of(self.providers_used)
        self._graph_inputs = {i.name: i for i in self.session.get_inputs()}
        self._output_names = [o.name for o in self.session.get_outputs()]
        self._layers = [self.manifest.kv_names(i) for i in range(self.manifest.num_layers)]
        self._check_graph()
        self.tensors = self._load_tensors()  # name -> OrtValue, bound to every state
        self._kv_dtype, self._kv_heads, self._kv_width = self.manifest.kv_spec()  # width: D, or D + 4 (int8 rows)
        self._logits_dtype = _numpy_dtype(self.manifest.outputs[LOGITS]["dtype"])  # not the cache's (int8 rows)
        self.shared_kv = bool(self.manifest.data["kv_cache"].get("shared_buffer"))
        log.info("onnxruntime %s session ready in %.0f ms on %s (threads=%s, %d expert/router inputs)",
                 ort.__version__, self.load_ms, self.providers_used, self.config.threads, len(self.tensors))

    def _deactivate(self) -> None:
        self.session = None
        self.tensors = {}

    def _model_path(self):
        return self.manifest.folder / self.manifest.data["model"]["file"]

    def _session_options(self, ort):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if self.config.threads:
            so.intra_op_num_threads = int(self.config.threads)
            so.inter_op_num_threads = 1
        if self.config.spinning is not None:
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.config.spinning else "0")
        kernels.register(so, self.manifest.data)
        return so

    def _check_graph(self) -> None:
        needed = set(_STEP_INPUTS[:1]) | {n for layer in self._layers for n in layer[:2]}
        missing = sorted(needed - set(self._graph_inputs))
        wanted_out = {"logits"} | {n for layer in self._layers for n in layer[2:]}
        missing_out = sorted(wanted_out - set(self._output_names))
        if missing or missing_out:
            raise CheckpointError(f"model.onnx does not match {self.manifest.folder}/hoe_config.json: graph lacks "
                                  f"inputs {missing[:5]} and outputs {missing_out[:5]}")
        self._output_names.remove("logits")
        self._output_names.insert(0, "logits")

    def _load_tensors(self) -> dict:
        """Experts and routers as OrtValues on the session's device, checked against the graph inputs."""
        arrays = self.manifest.hoe_tensors()
        for n, arr in arrays.items():
            _check_input(self._graph_inputs[n], arr)
        return {n: self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.device, 0)
                for n, arr in arrays.items()}

    # -- Polygraphy-style single forward ----------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_active()
        values = dict(self.tensors)
        for name, arr in feed.items():
            if name not in self._graph_inputs:
                raise BackendError(f"feed has {name!r}, which is not a graph input")
            values[name] = self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr))
        missing = sorted(set(self._graph_inputs) - set(values))
        if missing:
            raise BackendError(f"feed lacks graph inputs {missing[:6]}")
        outs = self.session.run_with_ort_values(self._output_names, values)
        return {name: v.numpy() for name, v in zip(self._output_names, outs)}

    # -- decode ----------------------------------------------------------------------------------------
    def new_state(self, batch: int) -> OrtState:
        self._require_active()
        binding = self.session.io_binding()
        for name, value in self.tensors.items():  # bound once for the whole generation
            binding.bind_ortvalue_input(name, value)
        if self.shared_kv:
            return OrtState(batch, binding)  # buffers come with the first step (their size depends on it)
        empty = np.zeros((batch, self._kv_heads, 0, self._kv_width), dtype=_numpy_dtype(self._kv_dtype))
        for past_k, past_v, _, _ in self._layers:
            binding.bind_cpu_input(past_k, empty)
            binding.bind_cpu_input(past_v, empty)
        state = OrtState(batch, binding)
        state.host_inputs = (empty,)
        state.kv = [empty] * (2 * len(self._layers))
        return state

    def step(self, state: OrtState, input_ids, attention_mask, position_ids, router_mix) -> np.ndarray:
        b = state.binding
        arrays = (input_ids, attention_mask, position_ids, router_mix)
        for name, arr in zip(_STEP_INPUTS, arrays):
            if name in self._graph_inputs:
                b.bind_cpu_input(name, arr)
        state.host_inputs = arrays
        if self.shared_kv:
            return self._shared_step(state, input_ids.shape[1], attention_mask.shape[1])
        for name in self._output_names:  # fresh outputs: present grows by T every step
            b.bind_output(name, self.device)
        self.session.run_with_iobinding(b)
        outs = b.get_outputs()
        logits = outs[0].numpy()[:, -1]  # [B, V]
        for i, (past_k, past_v, _, _) in enumerate(self._layers):  # present.{i} -> past_key_values.{i}
            b.bind_ortvalue_input(past_k, outs[1 + 2 * i])
            b.bind_ortvalue_input(past_v, outs[2 + 2 * i])
        b.clear_binding_outputs()
        state.kv = outs[1:]
        state.past_length += input_ids.shape[1]
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    # -- shared KV buffer (fused graphs) -------------------------------------------------------------
    def _shared_step(self, state: OrtState, new: int, total: int) -> np.ndarray:
        """One run with past = present = the state's buffers; T = `new` tokens, P+T = `total` columns."""
        if total > state.capacity:
            self._grow(state, total)
        host, value = self._logits_buffer(state, new)
        state.binding.bind_ortvalue_output("logits", value)
        self.session.run_with_iobinding(state.binding)
        logits = (host if self.device == "cpu" else value.numpy())[:, -1].copy()  # [B, V]
        state.past_length += new
        return logits if logits.dtype == np.float32 else logits.astype(np.float32)

    def _logits_buffer(self, state: OrtState, new: int) -> tuple:
        """(host array, OrtValue) [B,T,V] for the logits; the decode one (T = 1) is kept and reused."""
        if new == 1 and state.logits is not None:
            return state.logits
        host = np.empty((state.batch, new, self.manifest.vocab_size), dtype=self._logits_dtype)
        buffer = (host, self._ortvalue(host))
        if new == 1:
            state.logits = buffer
        return buffer

    def _grow(self, state: OrtState, needed: int) -> None:
        """(Re)allocate the per-layer buffers with >= `needed` columns, keeping the cached columns."""
        limit = max(needed, self.manifest.context_length)
        capacity = min(limit, max(needed, MIN_CAPACITY, 2 * state.capacity))
        shape = (state.batch, self._kv_heads, capacity, self._kv_width)
        dtype = _numpy_dtype(self._kv_dtype)
        old = [a if self.device == "cpu" else v.numpy() for a, v in zip(state.kv, state.kv_values)]
        state.kv, state.kv_values = [], []
        for i, (past_k, past_v, present_k, present_v) in enumerate(self._layers):
            for j, (past, present) in enumerate(((past_k, present_k), (past_v, present_v))):
                host = np.zeros(shape, dtype=dtype)
                if old:
                    host[:, :, : state.capacity] = old[2 * i + j]
                value = self._ortvalue(host)
                state.kv.append(host)
                state.kv_values.append(value)
                state.binding.bind_ortvalue_input(past, value)
                state.binding.bind_ortvalue_output(present, value)
        if self.device != "cpu":  # device copies made: the host arrays are not the buffers
            state.kv = [None] * len(state.kv)
        log.debug("shared KV buffer: %d -> %d columns (batch %d)", state.capacity, capacity, state.batch)
        state.capacity = capacity

    def _ortvalue(self, host: np.ndarray):
        """An OrtValue on the session's device; on CPU it shares `host`'s memory (no copy)."""
        return self._ort.OrtValue.ortvalue_from_numpy(host, self.device, 0)

    # -- row-level KV (continuous batching) ---------------------------------------------------------------
    def read_kv(self, state: OrtState) -> list[np.ndarray]:
        """Per layer key, value [B, H, P, D] host arrays of the state's past (a shared buffer's first P columns)."""
        if not self.shared_kv:
            return [v if isinstance(v, np.ndarray) else v.numpy() for v in state.kv]
        past = state.past_length
        return [(a if a is not None else v.numpy())[:, :, :past].copy() for a, v in zip(state.kv, state.kv_values)]

    def state_from_kv(self, kv: list[np.ndarray]) -> OrtState:
        self._require_active()
        if len(kv) != 2 * len(self._layers):
            raise BackendError(f"state_from_kv: expected {2 * len(self._layers)} arrays (key, value per layer), "
                               f"got {len(kv)}")
        batch, _, past, _ = kv[0].shape
        binding = self.session.io_binding()
        for name, value in self.tensors.items():
            binding.bind_ortvalue_input(name, value)
        state = OrtState(batch, binding)
        if self.shared_kv:  # new buffers holding these columns, bound as past and present
            state.kv = [np.ascontiguousarray(a) for a in kv]
            state.kv_values = [self._ortvalue(a) for a in state.kv]
            state.capacity = past
            self._grow(state, past + 1)
            state.past_length = past
            return state
        values = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0) for a in kv]
        for (past_k, past_v, _, _), k, v in zip(self._layers, values[0::2], values[1::2]):
            binding.bind_ortvalue_input(past_k, k)
            binding.bind_ortvalue_input(past_v, v)
        state.kv, state.past_length = values, past
        return state

    def describe(self) -> dict:
        return {"backend": self.name, "providers": list(getattr(self, "providers_used", [])),
                "providers_requested": list(getattr(self, "providers_requested", [])),
                "fallback": getattr(self, "fallback", None), "device": getattr(self, "device", None),
                "threads": self.config.threads, "spinning": self.config.spinning,
                "onnxruntime": getattr(getattr(self, "_ort", None), "__version__", None)}


def _numpy_dtype(name: str):
    return {"float32": np.float32, "float16": np.float16, "fp32": np.float32, "fp16": np.float16, "int8": np.int8}[name]


def _check_input(spec, arr: np.ndarray) -> None:
    """dtype and fixed dimensions of a tensor against the graph input it feeds."""
    want = _ORT_TYPES.get(spec.type)
    if want is not None and arr.dtype != want:
        raise ShapeMismatchError(f"{spec.name}: graph expects {spec.type}, file holds {arr.dtype}")
    if len(spec.shape) != arr.ndim or any(isinstance(d, int) and d != a for d, a in zip(spec.shape, arr.shape)):
        raise ShapeMismatchError(f"{spec.name}: graph expects shape {spec.shape}, file holds {list(arr.shape)}")


def _session(ort, path, options, providers, provider_options):
    """An InferenceSession; a graph onnxruntime cannot read (damaged file, `--no-verify`) -> CheckpointError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as errors

    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers,
                                    provider_options=provider_options)
    except (errors.Fail, errors.InvalidProtobuf, errors.NoSuchFile, errors.InvalidGraph, errors.RuntimeException) as e:
        raise CheckpointError(f"{path}: onnxruntime cannot load it ({str(e)[:300]}); expected the exported graph "
                              "and its .onnx.data intact (re-export, or load without --no-verify to check "
                              "the sha256)") from e
