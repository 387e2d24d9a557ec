"""Stand-ins for the `tensorrt` module and for device memory, for machines without TensorRT or a GPU.

The fake follows the TensorRT 10 name-based API our code calls, and checks what the real one checks
(profile min <= opt <= max, input shapes inside the selected profile, every I/O tensor bound before
execute, output buffers large enough). Its "engine" runs the ONNX graph with onnxruntime on the bytes
behind the bound addresses, so a backend that binds the wrong buffer, shape or profile gets wrong
logits. It is not TensorRT: the real code paths are checked where TensorRT is installed (test_trt_real.py).
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import numpy as np


class HostMemory:
    """DeviceMemory on host arrays: pointers are fake addresses into numpy blocks."""

    name = "host (test)"

    def __init__(self, gpu=None) -> None:
        self.blocks: dict[int, np.ndarray] = {}
        self.next = 1 << 20
        self.gpu = gpu or {"name": "Fake GPU", "compute_capability": "8.7"}

    def alloc(self, nbytes: int) -> int:
        ptr = self.next
        self.blocks[ptr] = np.zeros(max(nbytes, 1), np.uint8)
        self.next += (max(nbytes, 1) + 4095) // 4096 * 4096 + 4096
        return ptr

    def free(self, ptr: int) -> None:
        del self.blocks[ptr]

    def view(self, ptr: int, nbytes: int) -> np.ndarray:
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + block.size:
                return block[ptr - base: ptr - base + nbytes]
        raise AssertionError(f"access to {ptr:#x}+{nbytes} outside any allocation")

    def new_stream(self) -> int:
        return 7

    def h2d(self, ptr, host, stream):
        self.view(ptr, host.nbytes)[:] = np.ascontiguousarray(host).reshape(-1).view(np.uint8)

    def d2h(self, host, ptr, stream):
        host.reshape(-1).view(np.uint8)[:] = self.view(ptr, host.nbytes)

    def d2d(self, dst, src, nbytes, stream):
        self.view(dst, nbytes)[:] = self.view(src, nbytes)

    def sync(self, stream):
        pass

    def device_info(self):
        return dict(self.gpu)


def make_module(version: str = "10.3.0.30", memory: HostMemory | None = None, parse_errors: list[str] | None = None):
    """A fake `tensorrt` module (install it as sys.modules["tensorrt"])."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    major = int(version.split(".")[0])
    trt.calls = []  # what the code under test asked for, in order

    class Logger:
        WARNING, INFO, VERBOSE, ERROR = 2, 3, 4, 1

        def __init__(self, severity=2):
            self.severity = severity

    flags = {"STRONGLY_TYPED": 5} if major >= 10 else {}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags or {"EXPLICIT_BATCH": 0})
    builder_flags = {"TF32": 7} if major >= 11 else {"FP16": 0, "TF32": 7}
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", builder_flags)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.Logger = Logger

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs, self.outputs = flags, [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return types.SimpleNamespace(name=self.inputs[i])

        def get_output(self, i):
            return types.SimpleNamespace(name=self.outputs[i])

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
        def __init__(self, data):
            self.data = bytes(data) or b"fake-timing-cache"

        def serialize(self):
            return self.data + b"+"

    class Config:
        def __init__(self):
            self.flags, self.pools, self.profiles, self.cache = set(), {}, [], None
            self.builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
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
            self.types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
            self.manifest = json.loads((Path(plan["onnx"]).parent / "hoe_config.json").read_text())
            self.session = None

        num_io_tensors = property(lambda self: len(self.plan["inputs"]) + len(self.plan["outputs"]))
        num_optimization_profiles = property(lambda self: len(self.plan["profiles"]))

        def get_tensor_name(self, i):
            names = self.plan["inputs"] + self.plan["outputs"]
            return names[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.plan["inputs"] else trt.TensorIOMode.OUTPUT

        def create_execution_context(self):
            return Context(self)

        def run(self, feed):
            import onnxruntime as ort

            if self.session is None:
                so = ort.SessionOptions()
                so.intra_op_num_threads = 1
                self.session = ort.InferenceSession(self.plan["onnx"], so, providers=["CPUExecutionProvider"])
            names = self.plan["outputs"]
            return dict(zip(names, self.session.run(names, feed)))

    class Context:
        def __init__(self, engine):
            self.engine, self.profile, self.shapes, self.addresses = engine, None, {}, {}

        def set_optimization_profile_async(self, index, stream):
            if not 0 <= index < engine_profiles(self.engine):
                return False
            self.profile = index
            return True

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.plan["profiles"][self.profile].get(name, (list(shape), None, list(shape)))
            if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return False
            self.shapes[name] = tuple(int(s) for s in shape)
            return True

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)
            return True

        def get_tensor_shape(self, name):
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
            from onnx import helper

            trt.calls.append(("execute_async_v3", self.profile))
            mem = trt.memory
            missing = [n for n in self.engine.plan["inputs"] + self.engine.plan["outputs"] if n not in self.addresses]
            unshaped = [n for n in self.engine.plan["inputs"] if n not in self.shapes]
            assert not missing and not unshaped, f"unbound {missing} / unshaped {unshaped}"
            feed = {}
            for name in self.engine.plan["inputs"]:
                dtype = helper.tensor_dtype_to_np_dtype(self.engine.types[name])
                shape = self.shapes[name]
                nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
                feed[name] = mem.view(self.addresses[name], nbytes).view(dtype).reshape(shape).copy()
            for name, arr in self.engine.run(feed).items():
                arr = np.ascontiguousarray(arr)
                mem.view(self.addresses[name], arr.nbytes)[:] = arr.reshape(-1).view(np.uint8)
            return True

    def engine_profiles(engine):
        return len(engine.plan["profiles"])

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, OnnxParser, Runtime
    trt.memory = memory
    return trt
