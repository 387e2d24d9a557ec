"""Native TensorRT backend (`--backend trt`): the engine `hoe build-engine` made, run with TensorRT's
name-based API (set_input_shape / set_tensor_address / execute_async_v3).

    activate:  engine.json checked (TensorRT release, GPU compute capability, source graph, E/r/K maxima)
               engine deserialised; its I/O checked (names, dtypes, fixed dims, all on the device)
               one execution context per profile (0 prefill, 1 decode), sharing ONE activation block
               (USER_MANAGED + set_device_memory: they never run at the same time, see the lock)
               experts/routers uploaded once and bound once in both contexts
               step inputs and logits: one device buffer each, sized for the engine's maxima
    new_state: KV buffers for the max context, two sets per layer (ping-pong):
               step n reads past.{i} from set A and writes present.{i} into set B; step n+1 swaps them
               (present = [past, new] is written whole by the graph, so nothing is copied)
    step:      T == 1 -> decode context, T > 1 -> prefill context (prompts longer than max_prefill in
               chunks); the last position's logits are copied back

Steps of different states share the step-input and logits buffers and the activation block, so they run
one at a time (a lock), all on the backend's one CUDA stream (destroyed at deactivate()).
tensorrt and the CUDA binding (cuda_memory.py) are imported at activate(), never at import.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path

import numpy as np
from hoe.contract import engine as tp
from hoe.contract.io_spec import STEP_INPUTS as _STEP_INPUTS
from hoe.core.errors import BackendError, CheckpointError, InputError

from . import cuda_memory
from .base import Backend, DecodeState

log = logging.getLogger(__name__)

_NP = {"float32": np.float32, "float16": np.float16, "int64": np.int64, "int32": np.int32, "bool": np.bool_}
# tensorrt.DataType member names -> manifest dtypes (python/src/infer/pyFoundationalTypes.cpp)
_TRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
               "BOOL": "bool", "INT8": "int8", "UINT8": "uint8", "FP8": "float8", "INT4": "int4"}



def import_tensorrt():
    """The tensorrt module, or a BackendError that says how to get it."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendError("TensorRT's Python package is not installed: `pip install 'hoe[trt]'` on a desktop "
                           "GPU, or on a Jetson the JetPack package `python3-libnvinfer` (docs/DEPLOY_JETSON.md)"
                           ) from e
    return trt


class TrtState(DecodeState):
    def __init__(self, batch: int, kv: list[list[tuple[int, int]]]) -> None:
        super().__init__(batch)
        self.kv = kv  # kv[set][layer] = (key ptr, value ptr); set 0/1 ping-pong
        self.read = 0  # the set that holds the past


class TrtBackend(Backend):
    name = "trt"

    def __init__(self, manifest, config, memory: cuda_memory.DeviceMemory | None = None) -> None:
        super().__init__(manifest, config)
        self._memory = memory  # injected in tests; else chosen at activate()
        self._lock = threading.Lock()
        self._owned: list[int] = []
        self.stream = None
        self.contexts: dict = {}

    # -- activate ----------------------------------------------------------------------------------
    def _activate(self) -> None:
        trt = import_tensorrt()
        extra = self.config.extra or {}
        self.engine_dir = Path(extra.get("engine_dir") or self.manifest.folder / tp.ENGINE_DIR)
        self.info = tp.load_engine_manifest(self.engine_dir)
        self.mem = self._memory or cuda_memory.select(extra.get("cuda_binding"))
        self.gpu = self.mem.device_info()
        for warning in tp.check_engine_compat(self.info, trt.__version__, self.gpu):
            log.warning(warning)
        tp.check_source(self.info, self.manifest.data)
        self.limits = tp.EngineLimits.from_dict(self.info["limits"])
        self.profiles = {p: self.info["profiles"][p]["shapes"] for p in tp.PHASES}
        tensors = self._load_tensors()
        self.sizes = tp.exported_sizes(self.manifest.data)  # E, r, K: hoe_tensors checked the files against them
        tp.check_tensor_fits(self.info, self.sizes)
        self.engine = self._deserialize(trt)
        self._check_io(trt)
        self.stream = self.mem.new_stream()
        try:
            self._scratch = self._shared_activation_memory(trt)
            self.contexts = {p: self._context(trt, i) for i, p in enumerate(tp.PHASES)}
            self.plan = tp.buffer_plan(self.manifest.data, self.limits)
            self._bind_tensors(tensors)
            self._bind_step_buffers()
        except BaseException:
            self._release()  # a failed activate() keeps no stream, context or device memory
            raise
        self._layers = [self.manifest.kv_names(i) for i in range(self.manifest.num_layers)]
        self._kv_dtype, self._kv_heads, self._head_dim = self.manifest.kv_spec()
        log.info("TensorRT %s engine ready on %s through %s (batch <= %d, context <= %d)", trt.__version__,
                 self.gpu.get("name"), self.mem.name, self.limits.max_batch, self.limits.max_context)

    def _deserialize(self, trt):
        path = self.engine_dir / self.info["engine"]
        if not path.is_file():
            raise CheckpointError(f"TensorRT engine {path} named in {tp.ENGINE_MANIFEST} is missing")
        data = path.read_bytes()
        want = (self.info.get("sha256") or {}).get(self.info["engine"])
        if want and hashlib.sha256(data).hexdigest() != want:
            raise CheckpointError(f"{path}: sha256 differs from {tp.ENGINE_MANIFEST}; the engine file is damaged "
                                  "or was replaced: rebuild it with `hoe build-engine`")
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise BackendError(f"TensorRT could not deserialise {path} (see its log above); rebuild it on this "
                               "device with `hoe build-engine`")
        if engine.num_optimization_profiles != len(tp.PHASES):
            raise CheckpointError(f"{path} has {engine.num_optimization_profiles} optimisation profiles, "
                                  f"expected {len(tp.PHASES)} (prefill, decode)")
        return engine

    def _check_io(self, trt) -> None:
        """The engine's I/O tensors are those of hoe_config.json, with its dtypes and fixed dimensions, and all
        live on the device: we bind device buffers of the manifest's dtype. An input the parser turned into a
        shape tensor (location HOST, is_shape_inference_io) would need a host pointer holding its values;
        no exported graph has one, so such an engine is refused, not half-served."""
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = {n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        outputs = set(names) - inputs
        want_in, want_out = set(self.manifest.inputs), set(self.manifest.outputs)
        if inputs != want_in or outputs != want_out:
            raise CheckpointError(f"engine I/O does not match hoe_config.json: inputs missing "
                                  f"{sorted(want_in - inputs)[:5]}, outputs missing {sorted(want_out - outputs)[:5]}")
        problems = [p for n in names for p in self._io_problems(trt, n)]
        if problems:
            raise CheckpointError("the engine's I/O tensors are not what the trt backend binds (hoe_config.json): "
                                  + "; ".join(problems[:6]) + "; rebuild it with `hoe build-engine`")

    def _io_problems(self, trt, name: str) -> list[str]:
        spec = self.manifest.inputs.get(name) or self.manifest.outputs[name]
        raw = self.engine.get_tensor_dtype(name)
        dtype = _TRT_DTYPES.get(getattr(raw, "name", str(raw)), str(raw))
        problems = [] if dtype == spec["dtype"] else [f"{name} is {dtype}, expected {spec['dtype']}"]
        if self.engine.get_tensor_location(name) != trt.TensorLocation.DEVICE:
            problems.append(f"{name} lives on the host (a shape tensor); only device tensors are bound")
        elif self.engine.is_shape_inference_io(name):
            problems.append(f"{name} is a shape tensor (is_shape_inference_io); only data tensors are bound")
        dims, want = tuple(self.engine.get_tensor_shape(name)), spec["shape"]
        if len(dims) != len(want) or any(isinstance(w, int) and d not in (-1, w) for d, w in zip(dims, want)):
            problems.append(f"{name} has shape {list(dims)}, expected {want}")
        return problems

    def _shared_activation_memory(self, trt) -> int | None:
        """One activation block for both contexts, or None (each context then holds its own for all profiles).

        By default (STATIC) every context allocates the engine's largest activation memory, so two contexts
        double it; with ExecutionContextAllocationStrategy.USER_MANAGED (TensorRT >= 10.1) both get this one
        block through set_device_memory. That is valid because they never run at the same time: every use
        (step, infer) holds self._lock and enqueues on self.stream, and TensorRT only forbids using the block
        "in another execution context running in parallel" (IExecutionContext::setDeviceMemoryV2,
        NvInferRuntime.h)."""
        strategies = getattr(trt, "ExecutionContextAllocationStrategy", None)
        size = getattr(self.engine, "device_memory_size_v2", None)
        if strategies is None or size is None:
            log.info("TensorRT %s has no user-managed context memory (10.1+): each context allocates its own",
                     trt.__version__)
            return None
        self._scratch_bytes = int(size)
        ptr = self._alloc(max(self._scratch_bytes, 1))
        if ptr % 256:  # set_device_memory needs 256-byte aligned memory (pyCoreDoc.h); cudaMalloc gives that
            raise BackendError(f"{self.mem.name} returned device memory at {ptr:#x}, not 256-byte aligned as "
                               "TensorRT requires")
        return ptr

    def _context(self, trt, index: int):
        if self._scratch is None:
            ctx = self.engine.create_execution_context()
        else:
            ctx = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if ctx is None:
            raise BackendError("TensorRT could not create an execution context (out of device memory?)")
        if self._scratch is not None:
            ctx.set_device_memory(self._scratch, self._scratch_bytes)
        try:  # the Python binding raises RuntimeError where the C++ API returns false (pyCore.cpp)
            ok = ctx.set_optimization_profile_async(index, self.stream)
        except RuntimeError as e:
            raise BackendError(f"TensorRT refused optimisation profile {index}: {e}") from e
        if ok is False:
            raise BackendError(f"TensorRT refused optimisation profile {index}")
        return ctx

    def _load_tensors(self) -> dict[str, np.ndarray]:
        arrays = self.manifest.hoe_tensors()
        return {n: _as_dtype(arr, self.manifest.inputs[n]["dtype"], n) for n, arr in arrays.items()}

    def _alloc(self, nbytes: int) -> int:
        ptr = self.mem.alloc(nbytes)
        self._owned.append(ptr)
        return ptr

    def _bind_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        """Experts and routers: uploaded once, bound once in every context."""
        for name, arr in tensors.items():
            ptr = self._alloc(arr.nbytes)
            self.mem.h2d(ptr, arr, self.stream)
            for phase, ctx in self.contexts.items():
                tp.check_step(self.profiles[phase], name, arr.shape, phase)
                _ok(ctx.set_input_shape(name, arr.shape), f"set_input_shape({name}, {arr.shape})")
                _ok(ctx.set_tensor_address(name, ptr), f"set_tensor_address({name})")
        self.mem.sync(self.stream)

    def _bind_step_buffers(self) -> None:
        """input_ids, attention_mask, position_ids, router_mix and logits: one buffer each, at max size."""
        self.buffers = {}
        for name in [*_STEP_INPUTS, "logits"]:
            if name in self.plan:
                self.buffers[name] = self._alloc(self.plan[name]["bytes"])
                for ctx in self.contexts.values():
                    _ok(ctx.set_tensor_address(name, self.buffers[name]), f"set_tensor_address({name})")
        self._logits_dtype = _NP[self.manifest.outputs["logits"]["dtype"]]

    def _deactivate(self) -> None:
        self._release()

    def _release(self) -> None:
        """Give back what activate() took, also after an activate() that failed half-way."""
        if self.stream is not None:
            self.mem.sync(self.stream)
        self.contexts, self.engine = {}, None  # contexts and engine go before the memory they use
        for ptr in self._owned:
            self.mem.free(ptr)
        self._owned = []
        if self.stream is not None:
            self.mem.destroy_stream(self.stream)
            self.stream = None

    # -- decode ------------------------------------------------------------------------------------
    def new_state(self, batch: int) -> TrtState:
        self._require_active()
        if not 1 <= batch <= self.limits.max_batch:
            raise InputError(f"batch {batch} is outside the engine's range [1, {self.limits.max_batch}]; "
                             "rebuild with `hoe build-engine --max-batch`")
        itemsize = np.dtype(_NP[self._kv_dtype]).itemsize
        nbytes = batch * self._kv_heads * self.limits.max_context * self._head_dim * itemsize
        kv = [[(self._alloc(nbytes), self._alloc(nbytes)) for _ in self._layers] for _ in range(2)]
        return TrtState(batch, kv)

    def free_state(self, state: TrtState) -> None:
        """Give a finished state's KV buffers back (they are also freed at deactivate())."""
        for kv_set in state.kv:
            for k, v in kv_set:
                for ptr in (k, v):
                    if ptr in self._owned:
                        self._owned.remove(ptr)
                        self.mem.free(ptr)
        state.kv = []

    def step(self, state: TrtState, input_ids, attention_mask, position_ids, router_mix) -> np.ndarray:
        self._require_active()
        b, t = input_ids.shape
        p = state.past_length
        if b != state.batch or attention_mask.shape != (b, p + t):
            raise InputError(f"step expects input_ids [B={state.batch}, T] and attention_mask [B, P+T={p + t}], "
                             f"got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
        if p + t > self.limits.max_context:
            raise InputError(f"{p + t} tokens exceed the engine's context of {self.limits.max_context}; "
                             "rebuild with `hoe build-engine --max-context`")
        with self._lock:
            logits = None
            for start in range(0, t, self.limits.max_prefill):  # chunks of at most max_prefill new tokens
                end = min(t, start + self.limits.max_prefill)
                logits = self._run(state, input_ids[:, start:end], attention_mask[:, : p + end],
                                   position_ids[:, start:end], router_mix)
        return logits

    def _run(self, state: TrtState, ids, mask, pos, mix) -> np.ndarray:
        b, t = ids.shape
        p = state.past_length
        phase = "decode" if t == 1 else "prefill"
        ctx, profile = self.contexts[phase], self.profiles[phase]
        host = (ids, mask, pos, mix)
        for name, arr in zip(_STEP_INPUTS, host):
            if name not in self.buffers:
                continue
            arr = np.ascontiguousarray(_as_dtype(arr, self.manifest.inputs[name]["dtype"], name))
            tp.check_step(profile, name, arr.shape, phase)
            _ok(ctx.set_input_shape(name, arr.shape), f"set_input_shape({name}, {arr.shape})")
            self.mem.h2d(self.buffers[name], arr, self.stream)
        past_shape = (b, self._kv_heads, p, self._head_dim)
        src, dst = state.kv[state.read], state.kv[1 - state.read]
        for (past_k, past_v, present_k, present_v), (k_in, v_in), (k_out, v_out) in zip(self._layers, src, dst):
            for name, ptr in ((past_k, k_in), (past_v, v_in)):
                _ok(ctx.set_input_shape(name, past_shape), f"set_input_shape({name}, {past_shape})")
                _ok(ctx.set_tensor_address(name, ptr), f"set_tensor_address({name})")
            _ok(ctx.set_tensor_address(present_k, k_out), f"set_tensor_address({present_k})")
            _ok(ctx.set_tensor_address(present_v, v_out), f"set_tensor_address({present_v})")
        _ok(ctx.execute_async_v3(self.stream), "execute_async_v3")
        logits = self._last_logits(b, t)
        state.read = 1 - state.read
        state.past_length = p + t
        return logits

    def _last_logits(self, b: int, t: int) -> np.ndarray:
        """Copy logits[:, -1, :] ([B, T, V] on the device) into a host [B, V] array, then synchronise."""
        v = self.manifest.vocab_size
        out = np.empty((b, v), dtype=self._logits_dtype)
        row = v * out.itemsize
        if t == 1:
            self.mem.d2h(out, self.buffers["logits"], self.stream)
        else:
            for i in range(b):
                self.mem.d2h(out[i], self.buffers["logits"] + ((i * t) + t - 1) * row, self.stream)
        self.mem.sync(self.stream)
        return out if out.dtype == np.float32 else out.astype(np.float32)

    # -- one forward (Polygraphy style) ------------------------------------------------------------
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward with every non-expert input given by name -> every output (host arrays)."""
        self._require_active()
        unknown = sorted(set(feed) - set(self.manifest.inputs))
        if unknown:
            raise BackendError(f"feed has {unknown[:5]}, which are not graph inputs")
        hoe = ("experts.", "routers.")
        fed = sorted(n for n in feed if n.startswith(hoe))
        if fed:
            raise BackendError(f"{fed[:3]}: experts/routers are bound at activate(), not fed")
        missing = sorted(n for n in self.manifest.inputs if n not in feed and not n.startswith(hoe))
        if missing:
            raise BackendError(f"feed lacks graph inputs {missing[:6]}")
        phase = "decode" if feed["input_ids"].shape[1] == 1 else "prefill"
        ctx = self.contexts[phase]
        with self._lock:
            temp: dict[str, int] = {}  # tensor name -> temporary device buffer bound to it in ctx
            try:
                for name, arr in feed.items():
                    arr = np.ascontiguousarray(_as_dtype(arr, self.manifest.inputs[name]["dtype"], name))
                    tp.check_step(self.profiles[phase], name, arr.shape, phase)
                    temp[name] = self.mem.alloc(arr.nbytes)
                    self.mem.h2d(temp[name], arr, self.stream)
                    _ok(ctx.set_input_shape(name, arr.shape), f"set_input_shape({name}, {arr.shape})")
                    _ok(ctx.set_tensor_address(name, temp[name]), f"set_tensor_address({name})")
                outs = {}
                for name, spec in self.manifest.outputs.items():
                    outs[name] = np.empty(tuple(ctx.get_tensor_shape(name)), dtype=_NP[spec["dtype"]])
                    temp[name] = self.mem.alloc(outs[name].nbytes)
                    _ok(ctx.set_tensor_address(name, temp[name]), f"set_tensor_address({name})")
                _ok(ctx.execute_async_v3(self.stream), "execute_async_v3")
                for name, arr in outs.items():
                    self.mem.d2h(arr, temp[name], self.stream)
                self.mem.sync(self.stream)
            finally:
                self._release_temporaries(ctx, temp)
        return outs

    def _release_temporaries(self, ctx, temp: dict[str, int]) -> None:
        """After infer(), whether it worked or not: let queued work finish, point every binding infer() changed
        back at our own buffer (or unbind it: KV tensors are rebound by every step), then free the temporaries.
        A step after a failed infer() must never read or write freed memory."""
        try:
            self.mem.sync(self.stream)
        finally:
            for name, ptr in temp.items():
                if ctx.set_tensor_address(name, self.buffers.get(name, 0)) is False:
                    log.warning("TensorRT would not restore the binding of %s after infer()", name)
                self.mem.free(ptr)

    def describe(self) -> dict:
        info = getattr(self, "info", {})
        return {"backend": self.name, "tensorrt": info.get("tensorrt"), "engine_gpu": info.get("gpu"),
                "gpu": getattr(self, "gpu", None), "cuda_binding": getattr(getattr(self, "mem", None), "name", None),
                "precision": info.get("precision"), "limits": info.get("limits")}


def _as_dtype(arr: np.ndarray, dtype: str, name: str) -> np.ndarray:
    if dtype not in _NP:
        raise CheckpointError(f"{name}: dtype {dtype!r} is not one the trt backend handles ({sorted(_NP)})")
    return arr if arr.dtype == _NP[dtype] else arr.astype(_NP[dtype])


def _ok(result, what: str) -> None:
    """TensorRT's setters return False instead of raising."""
    if result is False:
        raise BackendError(f"TensorRT {what} failed; see TensorRT's log above")
