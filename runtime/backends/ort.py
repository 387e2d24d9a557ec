"""onnxruntime backend: one InferenceSession shared by all generators, experts bound once, KV cache handed on.

    activate: session (graph optimisation ALL, threads, spinning, providers)
              experts/routers safetensors -> OrtValues, once
    new_state: an IOBinding per generator; the expert/router OrtValues are bound to it once
    step:      bind input_ids / attention_mask / position_ids / router_mix (small host arrays),
               run, take the logits of the last position, then bind each present.{i} output
               OrtValue as the next step's past_key_values.{i} input (no copy through numpy)

`InferenceSession.run_with_iobinding` is thread-safe across bindings, so states of different
generators can step concurrently.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from hoe.core.errors import BackendError, CheckpointError, ShapeMismatchError

from . import ort_providers
from .base import Backend, DecodeState

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(bfloat16)": None, "tensor(int32)": np.int32}
_STEP_INPUTS = ("input_ids", "attention_mask", "position_ids", "router_mix")


class OrtState(DecodeState):
    def __init__(self, batch: int, binding) -> None:
        super().__init__(batch)
        self.binding = binding
        self.host_inputs: tuple = ()  # host arrays bound this step, kept alive until the next one
        self.kv: list = []  # the past bound now: per layer key, value (OrtValues or host arrays [B, H, P, D])


class OrtBackend(Backend):
    name = "ort"

    def _activate(self) -> None:
        import onnxruntime as ort

        self._ort = ort
        names, options = ort_providers.resolve(self.config.providers, ort)
        start = time.perf_counter()
        self.session = ort.InferenceSession(str(self._model_path()), sess_options=self._session_options(ort),
                                            providers=names, provider_options=options)
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
        self._kv_dtype, self._kv_heads, self._head_dim = self.manifest.kv_spec()
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
        empty = np.zeros((batch, self._kv_heads, 0, self._head_dim), dtype=_numpy_dtype(self._kv_dtype))
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

    # -- row-level KV (continuous batching) ---------------------------------------------------------------
    def read_kv(self, state: OrtState) -> list[np.ndarray]:
        return [v if isinstance(v, np.ndarray) else v.numpy() for v in state.kv]

    def state_from_kv(self, kv: list[np.ndarray]) -> OrtState:
        self._require_active()
        if len(kv) != 2 * len(self._layers):
            raise BackendError(f"state_from_kv: expected {2 * len(self._layers)} arrays (key, value per layer), "
                               f"got {len(kv)}")
        batch, _, past, _ = kv[0].shape
        binding = self.session.io_binding()
        for name, value in self.tensors.items():
            binding.bind_ortvalue_input(name, value)
        values = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), self.device, 0) for a in kv]
        for (past_k, past_v, _, _), k, v in zip(self._layers, values[0::2], values[1::2]):
            binding.bind_ortvalue_input(past_k, k)
            binding.bind_ortvalue_input(past_v, v)
        state = OrtState(batch, binding)
        state.kv, state.past_length = values, past
        return state

    def describe(self) -> dict:
        return {"backend": self.name, "providers": list(getattr(self, "providers_used", [])),
                "providers_requested": list(getattr(self, "providers_requested", [])),
                "fallback": getattr(self, "fallback", None), "device": getattr(self, "device", None),
                "threads": self.config.threads, "spinning": self.config.spinning,
                "onnxruntime": getattr(getattr(self, "_ort", None), "__version__", None)}


def _numpy_dtype(name: str):
    return {"float32": np.float32, "float16": np.float16, "fp32": np.float32, "fp16": np.float16}[name]


def _check_input(spec, arr: np.ndarray) -> None:
    """dtype and fixed dimensions of a tensor against the graph input it feeds."""
    want = _ORT_TYPES.get(spec.type)
    if want is not None and arr.dtype != want:
        raise ShapeMismatchError(f"{spec.name}: graph expects {spec.type}, file holds {arr.dtype}")
    if len(spec.shape) != arr.ndim or any(isinstance(d, int) and d != a for d, a in zip(spec.shape, arr.shape)):
        raise ShapeMismatchError(f"{spec.name}: graph expects shape {spec.shape}, file holds {list(arr.shape)}")
