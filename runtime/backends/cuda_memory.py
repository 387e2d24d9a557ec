"""Device memory for the TensorRT backend, from whatever CUDA binding is installed.

    cuda-python (cuda.bindings.runtime, or the older cuda.cudart)  preferred: small, no torch
    torch.cuda                                                     the GPU development machines have it
    libcudart via ctypes                                           a bare Jetson: neither of the above

Every allocator offers the same few calls on raw pointers (ints), which is all TensorRT's
`set_tensor_address` / `execute_async_v3` need. Nothing here is imported before it is used.

Contract: free(ptr) is safe while work queued on our streams may still use ptr (cudaFree synchronises
the device; the torch allocator is told about our streams with record_stream), and a stream from
new_stream() is given back with destroy_stream(). Host buffers are ordinary (pageable) numpy arrays:
the copies per token are a few B x T integers and one B x V logits row, and every step synchronises
for its logits, so pinned staging buffers would overlap little (docs/GPU.md; not measured).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib
import logging

import numpy as np
from hoe.core.errors import BackendError

log = logging.getLogger(__name__)

_H2D, _D2H, _D2D = 1, 2, 3  # cudaMemcpyKind values (identical in every CUDA runtime)


class DeviceMemory:
    """The interface: allocate, copy (async on a stream), synchronise, describe the GPU."""

    name = "?"

    def alloc(self, nbytes: int) -> int:
        raise NotImplementedError

    def free(self, ptr: int) -> None:
        raise NotImplementedError

    def new_stream(self) -> int:
        raise NotImplementedError

    def destroy_stream(self, stream: int) -> None:
        raise NotImplementedError

    def h2d(self, ptr: int, host: np.ndarray, stream: int) -> None:
        raise NotImplementedError

    def d2h(self, host: np.ndarray, ptr: int, stream: int) -> None:
        raise NotImplementedError

    def d2d(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        raise NotImplementedError

    def sync(self, stream: int) -> None:
        raise NotImplementedError

    def device_info(self) -> dict[str, str]:
        """{"name": ..., "compute_capability": "8.7"} of device 0."""
        raise NotImplementedError


class RawCopies(DeviceMemory):
    """h2d / d2h / d2d for bindings with one cudaMemcpyAsync(dst, src, nbytes, kind, stream) call."""

    def _copy(self, dst: int, src: int, nbytes: int, kind: int, stream: int) -> None:
        raise NotImplementedError

    def h2d(self, ptr, host, stream):
        self._copy(ptr, host.ctypes.data, host.nbytes, _H2D, stream)

    def d2h(self, host, ptr, stream):
        self._copy(host.ctypes.data, ptr, host.nbytes, _D2H, stream)

    def d2d(self, dst, src, nbytes, stream):
        self._copy(dst, src, nbytes, _D2D, stream)


class CudaPython(RawCopies):
    name = "cuda-python"

    def __init__(self, cudart) -> None:
        self.rt = cudart
        kinds = cudart.cudaMemcpyKind
        self._kinds = {_H2D: kinds.cudaMemcpyHostToDevice, _D2H: kinds.cudaMemcpyDeviceToHost,
                       _D2D: kinds.cudaMemcpyDeviceToDevice}
        self._streams: dict[int, object] = {}  # int handle (what TensorRT takes) -> cudaStream_t

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BackendError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))

    def new_stream(self) -> int:
        stream = self._check(self.rt.cudaStreamCreate())
        self._streams[int(stream)] = stream
        return int(stream)

    def destroy_stream(self, stream: int) -> None:
        self._check(self.rt.cudaStreamDestroy(self._streams.pop(stream, stream)))

    def _copy(self, dst, src, nbytes, kind, stream):
        self._check(self.rt.cudaMemcpyAsync(dst, src, nbytes, self._kinds[kind], self._streams.get(stream, stream)))

    def sync(self, stream):
        self._check(self.rt.cudaStreamSynchronize(self._streams.get(stream, stream)))

    def device_info(self):
        props = self._check(self.rt.cudaGetDeviceProperties(0))
        name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
        return {"name": name.rstrip("\x00"), "compute_capability": f"{props.major}.{props.minor}"}


class TorchCuda(DeviceMemory):
    """Buffers are torch uint8 tensors; copies are tensor copies on a torch stream (no second CUDA runtime)."""

    name = "torch"

    def __init__(self, torch) -> None:
        self.torch = torch
        self._blocks: dict[int, object] = {}  # base ptr -> uint8 tensor keeping the memory alive
        self._streams: dict[int, object] = {}

    def alloc(self, nbytes):
        t = self.torch.empty(max(nbytes, 1), dtype=self.torch.uint8, device="cuda")
        self._blocks[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr):
        """Blocks are allocated on the current (default) stream but used on ours: record_stream makes the caching
        allocator wait for the work queued on our streams before it hands the bytes out again."""
        t = self._blocks.pop(ptr, None)
        if t is not None:
            for s in self._streams.values():
                t.record_stream(s)

    def new_stream(self):
        s = self.torch.cuda.Stream()
        self._streams[s.cuda_stream] = s
        return s.cuda_stream

    def destroy_stream(self, stream):
        """torch owns its streams (a pool): we only stop using it, after its queued work is done."""
        s = self._streams.pop(stream, None)
        if s is not None:
            s.synchronize()

    def _view(self, ptr: int, nbytes: int):
        """The bytes [ptr, ptr + nbytes) of one of our blocks, as a uint8 tensor view."""
        for base, t in self._blocks.items():
            if base <= ptr and ptr + nbytes <= base + t.numel():
                return t[ptr - base: ptr - base + nbytes]
        raise BackendError(f"address {ptr:#x} (+{nbytes} bytes) is not inside memory allocated by this backend")

    def _on(self, stream):
        return self.torch.cuda.stream(self._streams[stream]) if stream in self._streams else contextlib.nullcontext()

    def h2d(self, ptr, host, stream):
        src = self.torch.from_numpy(np.ascontiguousarray(host).reshape(-1).view(np.uint8))
        with self._on(stream):
            self._view(ptr, host.nbytes).copy_(src)

    def d2h(self, host, ptr, stream):
        with self._on(stream):
            data = self._view(ptr, host.nbytes).cpu()
        host.reshape(-1).view(np.uint8)[:] = data.numpy()

    def d2d(self, dst, src, nbytes, stream):
        with self._on(stream):
            self._view(dst, nbytes).copy_(self._view(src, nbytes))

    def sync(self, stream):
        if stream in self._streams:
            self._streams[stream].synchronize()
        else:
            self.torch.cuda.synchronize()

    def device_info(self):
        p = self.torch.cuda.get_device_properties(0)
        return {"name": p.name, "compute_capability": f"{p.major}.{p.minor}"}


class CtypesCudart(RawCopies):
    name = "libcudart (ctypes)"

    def __init__(self, lib) -> None:
        self.lib = lib

    def alloc(self, nbytes):
        ptr = ctypes.c_void_p()
        _ctypes_check(self.lib.cudaMalloc(ctypes.byref(ptr), ctypes.c_size_t(max(nbytes, 1))), "cudaMalloc")
        return int(ptr.value)

    def free(self, ptr):
        _ctypes_check(self.lib.cudaFree(ctypes.c_void_p(ptr)), "cudaFree")

    def new_stream(self):
        s = ctypes.c_void_p()
        _ctypes_check(self.lib.cudaStreamCreate(ctypes.byref(s)), "cudaStreamCreate")
        return int(s.value or 0)

    def destroy_stream(self, stream):
        _ctypes_check(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)), "cudaStreamDestroy")

    def _copy(self, dst, src, nbytes, kind, stream):
        _ctypes_check(self.lib.cudaMemcpyAsync(ctypes.c_void_p(dst), ctypes.c_void_p(src), ctypes.c_size_t(nbytes),
                                               kind, ctypes.c_void_p(stream)), "cudaMemcpyAsync")

    def sync(self, stream):
        _ctypes_check(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def device_info(self):
        major, minor = ctypes.c_int(), ctypes.c_int()
        _ctypes_check(self.lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0), "cudaDeviceGetAttribute")
        _ctypes_check(self.lib.cudaDeviceGetAttribute(ctypes.byref(minor), 76, 0), "cudaDeviceGetAttribute")
        return {"name": _driver_device_name() or "unknown", "compute_capability": f"{major.value}.{minor.value}"}


def _ctypes_check(err: int, what: str) -> None:
    if err != 0:
        raise BackendError(f"{what} failed with CUDA error {err}")


def _cudart_library():
    for name in (ctypes.util.find_library("cudart"), "libcudart.so", "libcudart.so.13", "libcudart.so.12"):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise BackendError("libcudart was not found (install the CUDA runtime, cuda-python or torch with CUDA)")


def _driver_device_name() -> str | None:
    """GPU name through the driver API (libcuda is present wherever a driver is)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    buf, dev = ctypes.create_string_buffer(256), ctypes.c_int()
    if lib.cuInit(0) or lib.cuDeviceGet(ctypes.byref(dev), 0) or lib.cuDeviceGetName(buf, 256, dev):
        return None
    return buf.value.decode(errors="replace")


def select(prefer: str | None = None) -> DeviceMemory:
    """The first usable binding: cuda-python, then torch.cuda, then libcudart through ctypes.

    prefer: "cuda-python", "torch" or "ctypes" to force one (BackendError when it is unusable).
    """
    tried = []
    for kind in ([prefer] if prefer else ["cuda-python", "torch", "ctypes"]):
        try:
            memory = _make(kind)
        except (ImportError, OSError, BackendError) as e:
            tried.append(f"{kind}: {e}")
            continue
        log.info("device memory through %s", memory.name)
        return memory
    raise BackendError("no CUDA binding is usable for the trt backend; tried " + "; ".join(tried))


def _require_device(count: int, kind: str) -> None:
    if count < 1:
        raise BackendError(f"{kind}: no CUDA device visible")


def _make(kind: str) -> DeviceMemory:
    if kind == "cuda-python":
        for module in ("cuda.bindings.runtime", "cuda.cudart"):
            try:
                rt = importlib.import_module(module)
            except ImportError:
                continue
            memory = CudaPython(rt)
            _require_device(int(memory._check(rt.cudaGetDeviceCount())), kind)
            return memory
        raise ImportError("cuda-python is not installed")
    if kind == "torch":
        torch = importlib.import_module("torch")
        if not torch.cuda.is_available():
            raise BackendError("torch is installed but sees no CUDA device")
        return TorchCuda(torch)
    if kind == "ctypes":
        lib = _cudart_library()
        count = ctypes.c_int()
        err = lib.cudaGetDeviceCount(ctypes.byref(count))
        if err != 0:
            raise BackendError(f"libcudart found but cudaGetDeviceCount failed with CUDA error {err} (no GPU/driver?)")
        _require_device(count.value, kind)
        return CtypesCudart(lib)
    raise BackendError(f"unknown CUDA binding {kind!r}; expected cuda-python, torch or ctypes")
