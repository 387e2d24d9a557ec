"""The fake TensorRT itself behaves like the real API on the points where a mistake of ours would hide
(fake_trt.py's docstring names the header or binding each rule comes from)."""

from __future__ import annotations

import fake_trt
import numpy as np
import pytest


@pytest.fixture
def engine(toy, fake):
    """(trt, memory, engine) for the toy graph, built through the fake builder."""
    from hoe.contract import engine as tp
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    trt, memory = fake()
    out = build_engine(toy, BuildConfig(limits=tp.EngineLimits(max_batch=2, max_context=24, max_prefill=4)),
                       gpu=memory.device_info())
    runtime = trt.Runtime(trt.Logger())
    return trt, memory, runtime.deserialize_cuda_engine((out / tp.ENGINE_FILE).read_bytes())


def test_flags_follow_the_release():
    assert int(fake_trt.make_module("10.3.0.30").NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    trt11 = fake_trt.make_module("11.1.0.1")
    assert int(trt11.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0 and not hasattr(trt11.BuilderFlag, "FP16")


def test_set_tensor_address_refuses_unknown_names_and_unaligned_pointers(engine):
    trt, memory, eng = engine
    ctx = eng.create_execution_context()
    ptr = memory.alloc(1024)
    assert ctx.set_tensor_address("input_ids", ptr) is True
    assert ctx.set_tensor_address("input_ids", ptr + 128) is False  # 256-byte alignment
    assert ctx.set_tensor_address("no_such_tensor", ptr) is False


def test_input_shapes_follow_the_network_and_the_profile(engine):
    trt, memory, eng = engine
    ctx = eng.create_execution_context()
    assert eng.get_tensor_shape("past_key_values.0.key") == (-1, 1, -1, 4)
    assert ctx.set_input_shape("past_key_values.0.key", (2, 1, 5, 4))
    assert not ctx.set_input_shape("past_key_values.0.key", (2, 2, 5, 4))  # a fixed dimension
    assert not ctx.set_input_shape("input_ids", (3, 1))  # batch 3 > max_batch 2
    assert not ctx.set_input_shape("logits", (1, 1, 11))  # not an input
    with pytest.raises(RuntimeError):
        ctx.set_optimization_profile_async(5, memory.new_stream())


def test_work_happens_at_synchronisation_on_its_own_stream():
    memory = fake_trt.HostMemory()
    a, b = memory.new_stream(), memory.new_stream()
    ptr = memory.alloc(16)
    src, out = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    memory.h2d(ptr, src, a)
    src[:] = -1  # pageable: the data was taken at the call
    memory.d2h(out, ptr, a)
    assert not out.any()  # nothing ran yet
    memory.sync(b)
    assert not out.any()  # another stream's sync does not run it
    memory.sync(a)
    np.testing.assert_array_equal(out, np.arange(4))
    memory.destroy_stream(a)
    with pytest.raises(AssertionError, match="not created"):
        memory.h2d(ptr, src, a)
    memory.free(ptr)
    with pytest.raises(AssertionError, match="freed memory"):
        memory.view(ptr, 4)


def test_execution_needs_bindings_and_device_memory(engine):
    trt, memory, eng = engine
    ctx = eng.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    stream = memory.new_stream()
    assert ctx.execute_async_v3(stream) is False and "no address" in trt.errors[-1]
    for name in eng.names:
        ctx.set_tensor_address(name, memory.alloc(4096))
    for name in eng.plan["inputs"]:
        ctx.set_input_shape(name, [max(1, d) for d in eng.plan["profiles"][0].get(name, (eng.dims[name],))[0]])
    assert ctx.execute_async_v3(stream) is False and "without device memory" in trt.errors[-1]
    ctx.set_device_memory(memory.alloc(16), 16)  # too small: refused
    assert ctx.scratch is None
    ctx.set_device_memory(memory.alloc(eng.device_memory_size_v2), eng.device_memory_size_v2)
    assert ctx.execute_async_v3(stream) is True and len(memory.pending(stream)) == 1


def test_timing_cache_of_another_device_is_refused(fake):
    trt, _ = fake(gpu={"name": "A", "compute_capability": "8.9"})
    config = trt.Builder(trt.Logger()).create_builder_config()
    blob = bytes(config.create_timing_cache(b"").serialize())
    assert config.get_timing_cache() is None
    assert config.create_timing_cache(b"garbage") is None
    with pytest.raises(TypeError):
        config.set_timing_cache(None, False)
    trt, _ = fake(gpu={"name": "B", "compute_capability": "8.7"})
    config = trt.Builder(trt.Logger()).create_builder_config()
    cache = config.create_timing_cache(blob)
    assert config.set_timing_cache(cache, False) is False and config.get_timing_cache() is None
    assert config.set_timing_cache(cache, True) is True  # ignore_mismatch
