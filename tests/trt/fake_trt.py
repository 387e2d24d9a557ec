"""Stand-ins for the `tensorrt` module and for device memory, for machines without TensorRT or a GPU.

The fake follows the TensorRT 10 name-based API our code calls and behaves like the real one wherever a
mistake of ours would show on a device (sources: NVIDIA/TensorRT tags v10.3.0 and v11.1, include/NvInfer.h,
include/NvInferRuntime.h, python/src/infer/pyCore.cpp):

  * set_tensor_address returns False for a name that is not an I/O tensor and for a pointer that is not
    256-byte aligned (IExecutionContext::setTensorAddress: "Return false if the provided name does not map to
    an input or output tensor", "The pointer must have at least 256-byte alignment"); 0 resets a binding;
  * set_input_shape returns False for a name that is not an input, another rank, a fixed dimension that
    differs ("Each dimension must agree with the network dimension unless the latter was -1") or a shape
    outside the selected profile; set_optimization_profile_async raises RuntimeError on failure, as the
    Python binding does (PY_ASSERT_RUNTIME_ERROR in pyCore.cpp);
  * streams are not ignored: copies and execute_async_v3 are queued on their stream and run at sync(stream)
    (the most asynchronous behaviour CUDA allows, so a result read before the sync is stale); host data is
    captured when h2d is called (pageable memory), device memory is read when the queued work runs;
    execute_async_v3 captures the bindings and shapes at the call, as enqueueV3 does; free() synchronises
    the device first (cudaFree does) and any later access to the freed range fails;
  * execute_async_v3 returns False (and logs why in `trt.errors`) when an I/O address or input shape is
    unset, or when a USER_MANAGED context has no device memory;
  * every tensor has a dtype, a location and an is_shape_inference_io flag (overridable per tensor to play an
    engine whose parser changed a type or made an input a host shape tensor); static dimensions are -1-free;
  * create_execution_context(strategy): STATIC reserves `device_memory_size_v2` bytes per context from the
    memory; USER_MANAGED uses what set_device_memory(ptr, size) gives it (256-byte aligned, size >=
    device_memory_size_v2). Every execution scribbles over its scratch memory, as activations do, and a
    context whose scratch memory is in use by work queued on another stream refuses to run;
  * create_timing_cache returns None for bytes that are not a timing cache; set_timing_cache returns False
    for a cache made on a device with other properties unless ignore_mismatch (IBuilderConfig::setTimingCache:
    "A failure will be reported if the CUDA device property in the provided cache is different");
    get_timing_cache is None until a cache was set; a None cache given to set_timing_cache is a TypeError
    (pybind's reference argument);
  * NetworkDefinitionCreationFlag.STRONGLY_TYPED is 1 in 10.x and 0 in 11.x (NvInfer.h); BuilderFlag.FP16 does
    not exist in 11.x.

Its "engine" runs the ONNX graph with onnxruntime on the bytes behind the bound addresses, so a backend that
binds the wrong buffer, shape or profile gets wrong logits. It is not TensorRT: the real code paths run only
where TensorRT is installed (test_trt_real.py).
"""

from __future__ import annotations

import enum
import json
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ALIGNMENT = 256  # bytes: setTensorAddress / setDeviceMemoryV2
SCRATCH_BYTES = 1 << 16  # the fake engine's activation memory (device_memory_size_v2)
CACHE_MAGIC = b"FAKE-TIMING-CACHE/1|"


@dataclass
class _Op:
    what: str
    run: object  # callable
    blocks: set = field(default_factory=set)  # base addresses the work touches
    scratch: int | None = None  # scratch block of an execution


class HostMemory:
    """DeviceMemory on host arrays: pointers are fake addresses into numpy blocks, work is queued per stream."""

    name = "host (test)"

    def __init__(self, gpu=None) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.freed: list[tuple[int, int]] = []
        self.next = 1 << 20
        self.gpu = gpu or {"name": "Fake GPU", "compute_capability": "8.7"}
        self.queues: dict[int, list[_Op]] = {}
        self.streams_created = 0

    # -- memory
    def alloc(self, nbytes: int) -> int:
        ptr = self.next
        self.blocks[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        self.next += (max(nbytes, 1) + 4095) // 4096 * 4096 + 4096
        return ptr

    def free(self, ptr: int) -> None:
        if ptr not in self.blocks:
            raise AssertionError(f"free of {ptr:#x}, which is not a live allocation")
        self.sync_all()  # cudaFree synchronises the device before it releases the memory
        self.freed.append((ptr, self.blocks.pop(ptr).size))

    @property
    def live_bytes(self) -> int:
        return sum(b.size for b in self.blocks.values())

    def base_of(self, ptr: int, nbytes: int = 1) -> int | None:
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + block.size:
                return base
        return None

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        base = self.base_of(ptr, nbytes)
        if base is None:
            gone = any(b <= ptr < b + n for b, n in self.freed)
            raise AssertionError(f"access to {ptr:#x}+{nbytes} " + ("in freed memory" if gone else
                                                                     "outside any allocation"))
        return self.blocks[base][ptr - base: ptr - base + nbytes]

    # -- streams
    def new_stream(self) -> int:
        self.streams_created += 1
        handle = 0x5000 + 0x10 * self.streams_created
        self.queues[handle] = []
        return handle

    def destroy_stream(self, stream: int) -> None:
        if stream not in self.queues:
            raise AssertionError(f"destroy of stream {stream:#x}, which is not a live stream")
        self.sync(stream)
        del self.queues[stream]

    @property
    def live_streams(self) -> int:
        return len(self.queues)

    def enqueue(self, stream: int, op: _Op) -> None:
        if stream not in self.queues:
            raise AssertionError(f"work queued on stream {stream:#x}, which was not created (or was destroyed)")
        self.queues[stream].append(op)

    def pending(self, stream: int | None = None) -> list[_Op]:
        return [op for s, q in self.queues.items() if stream is None or s == stream for op in q]

    def sync(self, stream: int) -> None:
        queue = self.queues.get(stream)
        if queue is None:
            raise AssertionError(f"sync of stream {stream:#x}, which is not a live stream")
        while queue:
            queue.pop(0).run()

    def sync_all(self) -> None:
        for stream in list(self.queues):
            self.sync(stream)

    # -- copies (queued; host data captured at the call, as for pageable memory)
    def h2d(self, ptr, host, stream):
        data = np.ascontiguousarray(host).reshape(-1).view(np.uint8).copy()
        self.enqueue(stream, _Op("h2d", lambda: self._write(ptr, data), self._bases(ptr, data.size)))

    def d2h(self, host, ptr, stream):
        flat = host.reshape(-1).view(np.uint8)  # a view: the write at sync lands in `host`

        def run():
            flat[:] = self.view(ptr, flat.size)
        self.enqueue(stream, _Op("d2h", run, self._bases(ptr, flat.size)))

    def d2d(self, dst, src, nbytes, stream):
        def run():
            self.view(dst, nbytes)[:] = self.view(src, nbytes)
        self.enqueue(stream, _Op("d2d", run, self._bases(dst, nbytes) | self._bases(src, nbytes)))

    def _write(self, ptr: int, data: np.ndarray) -> None:
        self.view(ptr, data.size)[:] = data

    def _bases(self, ptr: int, nbytes: int) -> set:
        base = self.base_of(ptr, nbytes)
        return {base} if base is not None else set()

    def device_info(self):
        return dict(self.gpu)


_ONNX_TO_TRT = {1: "FLOAT", 10: "HALF", 16: "BF16", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 2: "UINT8"}
_TRT_TO_NP = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
              "BOOL": np.bool_, "UINT8": np.uint8}


def make_module(version: str = "10.3.0.30", memory: HostMemory | None = None, parse_errors: list[str] | None = None,
                dtypes: dict[str, str] | None = None, host_tensors: tuple[str, ...] = ()):
    """A fake `tensorrt` module (install it as sys.modules["tensorrt"]).

    dtypes: tensor name -> DataType name the "engine" reports instead of the graph's (e.g. "INT32");
    host_tensors: inputs the "parser" made host shape tensors (location HOST, is_shape_inference_io True).
    """
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.calls = []  # what the code under test asked for, in order
    trt.errors = []  # what the real TensorRT would have written to its logger as errors
    trt.memory = memory

    class Logger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, severity=2):
            self.severity = severity

    if major >= 11:  # NvInfer.h v11.1: kSTRONGLY_TYPED = 0 (deprecated, ignored), kPREFER_JIT/AOT_PYTHON_PLUGINS = 1/2
        net_flags = {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2}
        builder_flags = {"DEBUG": 2, "TF32": 7}
    else:  # NvInfer.h v10.3.0: kEXPLICIT_BATCH = 0 (deprecated), kSTRONGLY_TYPED = 1
        net_flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        builder_flags = {"FP16": 0, "INT8": 1, "DEBUG": 2, "TF32": 7}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.TensorLocation = enum.IntEnum("TensorLocation", {"DEVICE": 0, "HOST": 1})
    trt.DataType = enum.IntEnum("DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5,
                                             "FP8": 6, "BF16": 7, "INT64": 8, "INT4": 9})
    Strategy = enum.IntEnum("ExecutionContextAllocationStrategy", {"STATIC": 0, "ON_PROFILE_CHANGE": 1,
                                                                   "USER_MANAGED": 2})
    trt.ExecutionContextAllocationStrategy = Strategy  # a test may delete it to play TensorRT 10.0
    trt.Logger = Logger

    def device_key() -> bytes:
        gpu = memory.device_info() if memory else {"name": "Fake GPU", "compute_capability": "8.7"}
        return f"{gpu['name']}@{gpu['compute_capability']}".encode()

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i], is_shape_tensor=self.inputs[i] in host_tensors)

        def get_output(self, i):
            return types.SimpleNamespace(name=self.outputs[i], is_shape_tensor=False)

    class OnnxParser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        def parse_from_file(self, path):
            import onnx

            trt.calls.append(("parse_from_file", path))
            if parse_errors:
                self.errors = list(parse_errors)
                return False
            model = onnx.load(path)
            self.network.inputs = [i.name for i in model.graph.input]
            self.network.outputs = [o.name for o in model.graph.output]
            self.network.onnx_path = path
            return True

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return f"In node {i}: {self.errors[i]}"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            if not (len(lo) == len(opt) == len(hi)) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise ValueError(f"bad profile for {name}: {lo} {opt} {hi}")
            self.shapes[name] = (list(lo), list(opt), list(hi))

    class TimingCache:
        def __init__(self, key: bytes, entries: int = 0):
            self.key, self.entries = key, entries

        def serialize(self):
            return CACHE_MAGIC + self.key + b"|" + b"+" * self.entries

        @staticmethod
        def parse(data: bytes):
            if not data.startswith(CACHE_MAGIC) or data.count(b"|") < 2:
                return None
            key, _, entries = data[len(CACHE_MAGIC):].rpartition(b"|")
            return TimingCache(key, len(entries)) if set(entries) <= {ord("+")} else None

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles, self.cache = set(), {}, [], None
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def create_timing_cache(self, data):
            data = bytes(data)
            return TimingCache(device_key()) if not data else TimingCache.parse(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            if not isinstance(cache, TimingCache):
                raise TypeError("set_timing_cache(): incompatible function arguments (cache must be an ITimingCache)")
            if cache.key != device_key() and not ignore_mismatch:
                trt.errors.append(f"timing cache from {cache.key.decode()} does not match {device_key().decode()}")
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags=0):
            trt.calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build_serialized_network", sorted(int(f) for f in config.flags)))
            if config.cache is not None:
                config.cache.entries += 1  # tactics timed in this build land in the attached cache
            plan = {"onnx": network.onnx_path, "inputs": network.inputs, "outputs": network.outputs,
                    "profiles": [p.shapes for p in config.profiles], "version": trt.__version__}
            return json.dumps(plan).encode()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                return None
            return Engine(plan)

    class Engine:
        def __init__(self, plan):
            import onnx

            self.plan = plan
            model = onnx.load(plan["onnx"])
            values = [*model.graph.input, *model.graph.output]
            self.types = {v.name: v.type.tensor_type.elem_type for v in values}
            self.dims = {v.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                                       for d in v.type.tensor_type.shape.dim) for v in values}
            self.manifest = json.loads((Path(plan["onnx"]).parent / "hoe_config.json").read_text())
            self.session = None

        names = property(lambda self: self.plan["inputs"] + self.plan["outputs"])
        num_io_tensors = property(lambda self: len(self.names))
        num_optimization_profiles = property(lambda self: len(self.plan["profiles"]))
        device_memory_size_v2 = property(lambda self: SCRATCH_BYTES)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            if name in self.plan["inputs"]:
                return trt.TensorIOMode.INPUT
            return trt.TensorIOMode.OUTPUT if name in self.plan["outputs"] else trt.TensorIOMode.NONE

        def get_tensor_shape(self, name):
            return self.dims.get(name, ())

        def get_tensor_dtype(self, name):
            return trt.DataType[(dtypes or {}).get(name) or _ONNX_TO_TRT[self.types[name]]]

        def get_tensor_location(self, name):
            return trt.TensorLocation.HOST if name in host_tensors else trt.TensorLocation.DEVICE

        def is_shape_inference_io(self, name):
            return name in host_tensors

        def create_execution_context(self, strategy=None):
            strategy = Strategy(strategy or 0)
            trt.calls.append(("create_execution_context", strategy.name))
            return Context(self, strategy)

        def run(self, feed):
            import onnxruntime as ort

            if self.session is None:
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                self.session = ort.InferenceSession(self.plan["onnx"], so, providers=["CPUExecutionProvider"])
            names = self.plan["outputs"]
            return dict(zip(names, self.session.run(names, feed)))

    class Context:
        def __init__(self, engine, strategy):
            self.engine, self.strategy, self.profile, self.shapes, self.addresses = engine, strategy, 0, {}, {}
            self.scratch = None
            if strategy != Strategy.USER_MANAGED and memory is not None:
                self.scratch = memory.alloc(engine.device_memory_size_v2)  # the context's own activation memory

        def set_optimization_profile_async(self, index, stream):
            if not 0 <= index < self.engine.num_optimization_profiles:
                raise RuntimeError("Error in set optimization profile async.")
            self.profile = index
            return True

        def set_device_memory(self, ptr, size):
            if self.strategy != Strategy.USER_MANAGED:
                trt.errors.append("set_device_memory on a context that manages its own memory")
            elif ptr % ALIGNMENT or size < self.engine.device_memory_size_v2:
                trt.errors.append(f"set_device_memory({ptr:#x}, {size}): needs {ALIGNMENT}-byte alignment and "
                                  f">= {self.engine.device_memory_size_v2} bytes")
            else:
                self.scratch = int(ptr)

        def set_input_shape(self, name, shape):
            shape = tuple(int(s) for s in shape)
            fixed = self.engine.get_tensor_shape(name)
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT or len(shape) != len(fixed):
                return False
            if any(f != -1 and f != s for f, s in zip(fixed, shape)):
                return False
            lo, _, hi = self.engine.plan["profiles"][self.profile].get(name, (list(shape), None, list(shape)))
            if any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = shape
            return True

        def set_tensor_address(self, name, ptr):
            ptr = int(ptr)
            if name not in self.engine.names or ptr % ALIGNMENT:
                return False
            if ptr == 0:
                self.addresses.pop(name, None)
            else:
                self.addresses[name] = ptr
            return True

        def get_tensor_shape(self, name):
            if name in self.engine.plan["inputs"]:
                return self.shapes.get(name, self.engine.get_tensor_shape(name))
            return self._output_shapes()[name]

        def _output_shapes(self):
            from hoe.contract.engine import concrete_shape

            manifest = self.engine.manifest
            dims = {}
            for name, shape in self.shapes.items():
                for d, s in zip(manifest["inputs"][name]["shape"], shape):
                    if isinstance(d, str):
                        dims[d] = s
            return {n: concrete_shape(spec["shape"], dims) for n, spec in manifest["outputs"].items()}

        def execute_async_v3(self, stream):
            trt.calls.append(("execute_async_v3", self.profile))
            problem = self._not_ready(stream)
            if problem:
                trt.errors.append(f"enqueueV3: {problem}")
                return False
            addresses, shapes, scratch = dict(self.addresses), dict(self.shapes), self.scratch
            blocks = {memory.base_of(p) for p in addresses.values()} - {None}
            memory.enqueue(stream, _Op("execute", lambda: self._run(addresses, shapes, scratch), blocks, scratch))
            return True

        def _not_ready(self, stream) -> str | None:
            missing = [n for n in self.engine.names if n not in self.addresses]
            unshaped = [n for n in self.engine.plan["inputs"] if n not in self.shapes]
            if missing or unshaped:
                return f"no address for {missing[:4]} / no shape for {unshaped[:4]}"
            if self.scratch is None:
                return "USER_MANAGED context without device memory (set_device_memory)"
            busy = [op for s, q in memory.queues.items() if s != stream for op in q if op.scratch == self.scratch]
            if busy:
                return "its device memory is in use by an execution queued on another stream"
            return None

        def _run(self, addresses, shapes, scratch):
            feed = {}
            for name in self.engine.plan["inputs"]:
                dtype = _TRT_TO_NP[self.engine.get_tensor_dtype(name).name]
                shape = shapes[name]
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                feed[name] = memory.view(addresses[name], nbytes).view(dtype).reshape(shape).copy()
            memory.view(scratch, self.engine.device_memory_size_v2)[:] = 0xA5  # activations overwrite it
            outputs = self.engine.run(feed)
            for name, arr in outputs.items():
                arr = np.ascontiguousarray(arr)
                memory.view(addresses[name], arr.nbytes)[:] = arr.reshape(-1).view(np.uint8)

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    return trt
