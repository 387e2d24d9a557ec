"""The same code paths on real hardware: TensorRT engine build + trt backend, and onnxruntime's CUDA provider.

Skipped (with the reason) where TensorRT, a CUDA device or onnxruntime-gpu is absent — which includes the
development and CI machines (docs/GPU.md says what has and has not run on real hardware)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import toy_export as te
from hoe.contract.folder import Manifest
from hoe.core.errors import BackendError
from hoe.runtime.backends.base import BackendConfig

pytestmark = pytest.mark.gpu


def _cuda_memory():
    from hoe.runtime.backends import cuda_memory

    try:
        return cuda_memory.select()
    except BackendError as e:
        pytest.skip(f"no usable CUDA device/binding: {e}")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (it cannot be on the dev/CI machines; see ENVIRONMENT.md)")
def test_real_engine_generation_matches_onnxruntime(tmp_path):
    from hoe.contract.engine import EngineLimits
    from hoe.runtime.backends.trt import TrtBackend
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    memory = _cuda_memory()
    folder = te.make_folder(tmp_path / "export")
    build_engine(folder, BuildConfig(limits=EngineLimits(max_batch=2, max_context=24, max_prefill=4)))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, te.VOCAB, (2, 8)).astype(np.int64)
    mask, pos = np.ones_like(ids), np.tile(np.arange(8), (2, 1))
    mix = rng.dirichlet(np.ones(te.N_ROUTERS), 2).astype(np.float32)
    ref = te.full_forward_logits(folder, ids, mask, pos, mix)
    with TrtBackend(Manifest.load(folder), BackendConfig(name="trt"), memory=memory) as backend:
        state = backend.new_state(2)
        got = [backend.step(state, ids[:, :5], mask[:, :5], pos[:, :5], mix)]
        for t in range(5, 8):
            got.append(backend.step(state, ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], mix))
    np.testing.assert_allclose(np.stack(got, 1), ref[:, 4:], rtol=1e-2, atol=1e-2)  # TF32 may be on


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None,
                    reason="TensorRT is not installed (it cannot be on the dev/CI machines; see ENVIRONMENT.md)")
def test_real_engine_survives_an_unreadable_timing_cache_and_a_failed_infer(tmp_path):
    """The three defects of issue 17 on the device: a foreign/garbage trt/timing.cache, and a step after an infer()
    that failed half-way through its bindings."""
    from hoe.contract import engine as tp
    from hoe.contract.engine import EngineLimits
    from hoe.core.errors import InputError
    from hoe.runtime.backends.trt import TrtBackend
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    memory = _cuda_memory()
    folder = te.make_folder(tmp_path / "export")
    (folder / tp.ENGINE_DIR).mkdir()
    (folder / tp.ENGINE_DIR / tp.TIMING_CACHE).write_bytes(b"not a timing cache")
    out = build_engine(folder, BuildConfig(limits=EngineLimits(max_batch=2, max_context=24, max_prefill=4)))
    assert (out / tp.ENGINE_MANIFEST).is_file() and (out / tp.TIMING_CACHE).read_bytes() != b"not a timing cache"
    ids = np.array([[1, 2, 3], [4, 5, 6]], np.int64)
    mask, pos = np.ones_like(ids), np.tile(np.arange(3), (2, 1))
    mix = np.full((2, te.N_ROUTERS), 0.25, np.float32)
    feed = {"input_ids": ids, "attention_mask": np.ones((2, 30), np.int64), "position_ids": pos, "router_mix": mix}
    for i in range(te.LAYERS):
        for w in ("key", "value"):
            feed[f"past_key_values.{i}.{w}"] = np.zeros((2, te.KV_HEADS, 0, te.HEAD_DIM), np.float32)
    with TrtBackend(Manifest.load(folder), BackendConfig(name="trt"), memory=memory) as backend:
        with pytest.raises(InputError):
            backend.infer(feed)
        logits = backend.step(backend.new_state(2), ids, mask, pos, mix)
    ref = te.full_forward_logits(folder, ids, mask, pos, mix)
    np.testing.assert_allclose(logits, ref[:, -1], rtol=1e-2, atol=1e-2)


def test_onnxruntime_tensorrt_provider_runs_without_fallback(tmp_path):
    """Our TensorRT EP options on onnxruntime-gpu with TensorRT's libraries: the provider really runs."""
    import onnxruntime as ort
    from hoe.runtime.backends import ort_providers as op

    if op.TENSORRT not in ort.get_available_providers() or importlib.util.find_spec("tensorrt") is None:
        pytest.skip(f"onnxruntime {ort.__version__} with providers {ort.get_available_providers()} and "
                    f"tensorrt importable: {importlib.util.find_spec('tensorrt') is not None} (needs both)")
    folder = te.make_folder(tmp_path / "export")
    names, options = op.provider_options(["tensorrt"], tmp_path)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=names, provider_options=options)
    op.check_fallback(["tensorrt"], sess)  # raises if TensorRT (or CUDA) did not load


def test_onnxruntime_cuda_provider_runs_without_fallback(tmp_path):
    import onnxruntime as ort
    from hoe.runtime.backends import ort_providers as op
    from safetensors.numpy import load_file

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no CUDA provider (CPU build); providers "
                    f"{ort.get_available_providers()}")
    folder = te.make_folder(tmp_path / "export")
    names, options = op.provider_options(["cuda"], tmp_path)
    sess = ort.InferenceSession(str(folder / "model.onnx"), providers=names, provider_options=options)
    op.check_fallback(["cuda"], sess)  # raises if CUDA did not load
    ids = np.array([[1, 2, 3]], np.int64)
    feed = {**load_file(str(folder / "experts.safetensors")), **load_file(str(folder / "routers.safetensors")),
            "input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.array([[0, 1, 2]]),
            "router_mix": np.full((1, te.N_ROUTERS), 0.25, np.float32)}
    for i in range(te.LAYERS):
        for w in ("key", "value"):
            feed[f"past_key_values.{i}.{w}"] = np.zeros((1, te.KV_HEADS, 0, te.HEAD_DIM), np.float32)
    got = sess.run(["logits"], feed)[0]
    ref = te.full_forward_logits(folder, ids, feed["attention_mask"], feed["position_ids"], feed["router_mix"])
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)
