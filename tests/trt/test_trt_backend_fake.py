"""The trt backend against a fake TensorRT (tests/trt/fake_trt.py) on host memory.

The fake's engine runs the toy graph with onnxruntime on the bytes behind the bound addresses, and its stream
work runs only at synchronisation, so these tests check our side of the API: profiles, bindings, KV ping-pong,
chunked prefill, logits copies, bindings after a failed infer(), the shared activation memory, the stream's
lifetime, and the refusals (other TensorRT, other GPU, changed graph, oversize experts, damaged engine, I/O
tensors of another dtype or on the host).
"""

from __future__ import annotations

import json

import fake_trt
import numpy as np
import pytest
import toy_export as te
from hoe.contract import engine as tp
from hoe.contract.folder import Manifest
from hoe.core.errors import BackendError, CheckpointError, InputError, ShapeMismatchError
from hoe.runtime.backends.base import BackendConfig

SMALL = dict(max_batch=2, max_context=24, max_prefill=4)


def _build(folder, fake, **limits):
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    trt, memory = fake()
    cfg = BuildConfig(limits=tp.EngineLimits(**{"max_batch": 2, "max_context": 24, "max_prefill": 4, **limits}))
    return build_engine(folder, cfg, gpu=memory.device_info()), trt, memory


def _backend(folder, memory):
    from hoe.runtime.backends.trt import TrtBackend

    return TrtBackend(Manifest.load(folder), BackendConfig(name="trt"), memory=memory)


def _inputs(batch=2, length=9, seed=3):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, te.VOCAB, (batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[1:, :2] = 0  # left padding on the other rows
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    mix = rng.dirichlet(np.ones(te.N_ROUTERS), batch).astype(np.float32)
    return ids, mask, pos, mix


def test_generation_matches_full_forward(toy, fake):
    """Prefill in chunks (max_prefill 4 < prompt 9), then decode through the ping-pong KV buffers: the logits
    of every step equal one full forward over the whole sequence."""
    _, trt, memory = _build(toy, fake)
    ids, mask, pos, mix = _inputs(length=9)
    ref = te.full_forward_logits(toy, ids, mask, pos, mix)  # [B, 9, V]
    prompt = 6
    with _backend(toy, memory) as backend:
        state = backend.new_state(2)
        got = [backend.step(state, ids[:, :prompt], mask[:, :prompt], pos[:, :prompt], mix)]
        for t in range(prompt, ids.shape[1]):
            got.append(backend.step(state, ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], mix))
        assert state.past_length == ids.shape[1]
    np.testing.assert_allclose(got[0], ref[:, prompt - 1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.stack(got[1:], 1), ref[:, prompt:], rtol=1e-5, atol=1e-4)
    profiles = [c[1] for c in trt.calls if c[0] == "execute_async_v3"]
    assert profiles == [0, 0, 1, 1, 1]  # two prefill chunks, then three decode steps


def _feed(ids, mask, pos, mix):
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "router_mix": mix}
    for i in range(te.LAYERS):
        for w in ("key", "value"):
            feed[f"past_key_values.{i}.{w}"] = np.zeros((ids.shape[0], te.KV_HEADS, 0, te.HEAD_DIM), np.float32)
    return feed


def test_infer_matches_onnxruntime(toy, fake):
    _, _, memory = _build(toy, fake)
    ids, mask, pos, mix = _inputs(length=3)
    with _backend(toy, memory) as backend:
        out = backend.infer(_feed(ids, mask, pos, mix))
        # and the step path still works after it: infer() put its bindings back
        logits = backend.step(backend.new_state(2), ids, mask, pos, mix)
    ref = te.full_forward_logits(toy, ids, mask, pos, mix)
    np.testing.assert_allclose(out["logits"], ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(logits, ref[:, -1], rtol=1e-5, atol=1e-4)
    assert out["present.1.value"].shape == (2, te.KV_HEADS, 3, te.HEAD_DIM)


@pytest.mark.parametrize("failure", ["shape", "execute"])
def test_failed_infer_leaves_no_binding_on_freed_memory(toy, fake, failure):
    """infer() binds temporaries in the context; when it fails (a refused shape after input_ids was bound, or
    execute_async_v3 returning False) the next step must not read the freed temporaries."""
    _, _, memory = _build(toy, fake)
    ids, mask, pos, mix = _inputs(length=3)
    feed = _feed(ids, mask, pos, mix)
    with _backend(toy, memory) as backend:
        ctx = backend.contexts["prefill"]
        if failure == "shape":
            feed["attention_mask"] = np.ones((2, 30), np.int64)  # > max_context 24: refused after input_ids is bound
            error = InputError
        else:
            ctx.execute_async_v3 = lambda stream: False
            error = BackendError
        with pytest.raises(error):
            backend.infer(feed)
        vars(ctx).pop("execute_async_v3", None)
        logits = backend.step(backend.new_state(2), ids, mask, pos, mix)
    np.testing.assert_allclose(logits, te.full_forward_logits(toy, ids, mask, pos, mix)[:, -1], rtol=1e-5, atol=1e-4)


def test_contexts_share_one_activation_block(toy, fake):
    """Both contexts run on one USER_MANAGED block of device_memory_size_v2 bytes instead of one each."""
    _, trt, memory = _build(toy, fake)
    with _backend(toy, memory) as backend:
        shared = memory.live_bytes
        assert [c for c in trt.calls if c[0] == "create_execution_context"] == [
            ("create_execution_context", "USER_MANAGED")] * 2
        assert {ctx.scratch for ctx in backend.contexts.values()} == {backend._scratch}
        ids, mask, pos, mix = _inputs(length=5)
        logits = backend.step(backend.new_state(2), ids, mask, pos, mix)
    np.testing.assert_allclose(logits, te.full_forward_logits(toy, ids, mask, pos, mix)[:, -1], rtol=1e-5, atol=1e-4)
    del trt.ExecutionContextAllocationStrategy  # a TensorRT without it (10.0): each context allocates its own
    with _backend(toy, memory):
        assert memory.live_bytes - shared == fake_trt.SCRATCH_BYTES


def test_stream_is_destroyed_at_deactivate(toy, fake):
    _, _, memory = _build(toy, fake)
    for _ in range(2):
        with _backend(toy, memory):
            assert memory.live_streams == 1
        assert memory.live_streams == 0 and memory.live_bytes == 0
    assert memory.streams_created == 2


@pytest.mark.parametrize("engine, match", [
    (dict(dtypes={"input_ids": "INT32"}), "input_ids is int32, expected int64"),
    (dict(dtypes={"logits": "HALF"}), "logits is float16, expected float32"),
    (dict(host_tensors=("position_ids",)), "position_ids lives on the host"),
])
def test_engine_io_of_another_dtype_or_on_the_host_is_refused(toy, fake, engine, match):
    _build(toy, fake)
    _, memory = fake(**engine)
    with pytest.raises(CheckpointError, match=match):
        _backend(toy, memory).activate()


@pytest.mark.parametrize("case, error, match", [
    ("trt_version", CheckpointError, "built by TensorRT 10.3.0.30"),
    ("gpu", CheckpointError, "compute capability 8.7"),
    ("graph", CheckpointError, "rebuild it"),
    ("damaged", CheckpointError, "sha256 differs"),
])
def test_engine_from_elsewhere_is_refused(toy, fake, case, error, match):
    out, _, memory = _build(toy, fake)
    if case == "trt_version":
        _, memory = fake("10.7.0.23")
    elif case == "gpu":
        _, memory = fake(gpu={"name": "Other GPU", "compute_capability": "9.0"})
    elif case == "graph":
        cfg = json.loads((toy / "hoe_config.json").read_text())
        cfg["sha256"]["model.onnx"] = "0" * 64
        (toy / "hoe_config.json").write_text(json.dumps(cfg))
        with pytest.raises(error, match=match):
            _backend_unverified(toy, memory).activate()
        return
    else:
        (out / tp.ENGINE_FILE).write_bytes((out / tp.ENGINE_FILE).read_bytes() + b" ")
    with pytest.raises(error, match=match):
        _backend(toy, memory).activate()


def _declare_sizes(folder, **sizes):
    """Tell hoe_config.json the new E / r of hand-grown tensors (what swap_experts does)."""
    import json

    path = folder / "hoe_config.json"
    data = json.loads(path.read_text())
    keys = {"experts": "n_experts", "rank": "rank", "routers": "n_routers"}
    data["hoe"].update({keys[k]: v for k, v in sizes.items()})
    path.write_text(json.dumps(data))


def _backend_unverified(folder, memory):
    from hoe.runtime.backends.trt import TrtBackend

    return TrtBackend(Manifest.load(folder, verify=False), BackendConfig(name="trt"), memory=memory)


def test_same_capability_other_gpu_name_only_warns(toy, fake, caplog):
    _build(toy, fake)
    _, memory = fake(gpu={"name": "Jetson AGX Orin", "compute_capability": "8.7"})
    with _backend(toy, memory):
        pass
    assert "tuned for the other GPU" in caplog.text


def test_oversize_requests_are_refused(toy, fake):
    _, _, memory = _build(toy, fake)
    ids, mask, pos, mix = _inputs(batch=2, length=30)
    with _backend(toy, memory) as backend:
        with pytest.raises(InputError, match="--max-batch"):
            backend.new_state(3)
        state = backend.new_state(2)
        with pytest.raises(InputError, match="context of 24"):
            backend.step(state, ids, mask, pos, mix)


def test_bigger_experts_need_a_bigger_engine(toy, fake):
    from safetensors.numpy import load_file, save_file

    _build(toy, fake)
    _, memory = fake()
    experts = load_file(str(toy / "experts.safetensors"))
    experts = {k: np.concatenate([v, v[:1]], 0) for k, v in experts.items()}  # E = 4 > engine's 3
    save_file(experts, str(toy / "experts.safetensors"))
    routers = load_file(str(toy / "routers.safetensors"))
    routers = {k: np.concatenate([v, v[:, :1]], 1) for k, v in routers.items()}
    save_file(routers, str(toy / "routers.safetensors"))
    _declare_sizes(toy, experts=4)
    with pytest.raises(ShapeMismatchError, match="--max-experts 4"):
        _backend_unverified(toy, memory).activate()


def test_swapped_experts_within_limits_run_without_rebuild(toy, fake):
    """Engine built with --max-rank 4: experts of rank 3 (exported rank 2) load and run correctly."""
    from safetensors.numpy import load_file, save_file

    _, _, memory = _build(toy, fake, max_rank=4)
    experts = load_file(str(toy / "experts.safetensors"))
    rng = np.random.default_rng(9)
    grown = {}
    for k, v in experts.items():
        if k.endswith("lora_A"):
            v = np.concatenate([v, rng.normal(size=(v.shape[0], 1, v.shape[2])).astype(np.float32)], 1)
        elif k.endswith("lora_B"):
            v = np.concatenate([v, rng.normal(size=(*v.shape[:2], 1)).astype(np.float32)], 2)
        grown[k] = v
    save_file(grown, str(toy / "experts.safetensors"))
    _declare_sizes(toy, rank=3)
    ids, mask, pos, mix = _inputs(length=5)
    ref = te.full_forward_logits(toy, ids, mask, pos, mix)
    with _backend_unverified(toy, memory) as backend:
        assert backend.sizes["rank"] == 3
        logits = backend.step(backend.new_state(2), ids, mask, pos, mix)
    np.testing.assert_allclose(logits, ref[:, -1], rtol=1e-5, atol=1e-4)


def test_missing_tensorrt_says_how_to_install(toy, monkeypatch):
    from hoe.runtime.backends.trt import TrtBackend

    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)
    with pytest.raises(BackendError, match="python3-libnvinfer"):
        TrtBackend(Manifest.load(toy), BackendConfig(name="trt"), memory=fake_trt.HostMemory()).activate()


def test_importing_the_backend_needs_neither_tensorrt_nor_torch():
    import subprocess
    import sys

    code = ("import sys; import hoe.runtime.backends.trt, hoe.runtime.backends.ort_providers, "
            "hoe.runtime.trt_cli; print('tensorrt' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unaligned_device_memory_is_refused_and_a_failed_activate_keeps_nothing(toy, fake):
    """TensorRT takes only 256-byte aligned device memory; an allocator that breaks that (here: every block
    8 bytes off) fails activate() with the reason, and activate() gives back what it took."""
    _build(toy, fake)

    class Unaligned(fake_trt.HostMemory):
        def alloc(self, nbytes):
            return super().alloc(nbytes + 8) + 8

        def free(self, ptr):
            super().free(ptr - 8)

    _, memory = fake()
    memory.__class__ = Unaligned
    with pytest.raises(BackendError, match="not 256-byte aligned"):
        _backend(toy, memory).activate()
    assert memory.live_bytes == 0 and memory.live_streams == 0
    trt, memory = fake()
    del trt.ExecutionContextAllocationStrategy  # no shared block: the first refusal is set_tensor_address's
    memory.__class__ = Unaligned
    backend = _backend(toy, memory)
    with pytest.raises(BackendError, match=r"set_tensor_address\(experts"):
        backend.activate()
    assert backend._owned == [] and memory.live_streams == 0  # (STATIC contexts hold their own memory till freed)
