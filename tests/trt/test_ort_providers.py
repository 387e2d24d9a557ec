"""onnxruntime provider options and fallback reporting (CPU onnxruntime here: the CUDA request falls back)."""

from __future__ import annotations

import numpy as np
import pytest
import toy_export as te
from hoe.core.errors import BackendError
from hoe.runtime.backends import ort_providers as op


def test_normalize_orders_and_completes():
    assert op.normalize(["trt"]) == [op.TENSORRT, op.CUDA, op.CPU]
    assert op.normalize(["CPUExecutionProvider", "cuda"]) == [op.CUDA, op.CPU]
    with pytest.raises(BackendError, match="'rocm'"):
        op.normalize(["rocm"])


def test_tensorrt_options_enable_engine_cache_and_profiles(tmp_path):
    profile = {"min": {"input_ids": [1, 1]}, "opt": {"input_ids": [1, 1]}, "max": {"input_ids": [4, 256]}}
    names, options = op.provider_options(["tensorrt"], tmp_path, op.ProviderSettings(fp16=True, workspace_mb=512),
                                         profile)
    trt = options[names.index(op.TENSORRT)]
    assert trt["trt_engine_cache_enable"] == "1" and (tmp_path / "ort_trt_engines").is_dir()
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort_trt_engines")
    assert trt["trt_fp16_enable"] == "1" and trt["trt_max_workspace_size"] == str(512 << 20)
    assert trt["trt_profile_max_shapes"] == "input_ids:4x256"
    assert options[names.index(op.CUDA)]["device_id"] == "0" and options[-1] == {}
    with pytest.raises(BackendError, match="min/opt/max"):
        op.provider_options(["tensorrt"], tmp_path, profile={"min": {}})


def test_resolve_merges_user_options(tmp_path):
    names, options = op.resolve([("cuda", {"device_id": 1, "enable_cuda_graph": True})], cache_dir=tmp_path)
    assert names == [op.CUDA, op.CPU]
    assert options[0]["device_id"] == "1" and options[0]["enable_cuda_graph"] == "True"
    assert op.resolve(None) == ([op.CPU], [{}])
    with pytest.raises(BackendError, match="name or"):
        op.resolve([("cuda",)])


def test_profile_from_manifest_formats_for_ort():
    from hoe.contract.engine import EngineLimits, ort_profile_shapes, profiles

    shapes = ort_profile_shapes(profiles(te.manifest(), EngineLimits(max_context=32, max_prefill=8)))
    text = op.format_shapes(shapes["max"])
    assert "input_ids:1x8" in text and "past_key_values.0.key:1x1x31x4" in text


def _session(folder, requested, profile_dir=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_dir / "p")
    names, options = op.provider_options(requested, folder)
    return ort.InferenceSession(str(folder / "model.onnx"), so, providers=names, provider_options=options)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cpu_fallback_is_reported_not_hidden(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider: no fallback to show")
    folder = te.make_folder(tmp_path / "export")
    sess = _session(folder, ["cuda"])
    assert op.active_providers(sess) == [op.CPU]
    with pytest.raises(BackendError, match=r"did not enable \['CUDAExecutionProvider'\]"):
        op.check_fallback(["cuda"], sess)
    assert op.check_fallback(["cuda"], sess, strict=False) == [op.CUDA]
    assert "CUDAExecutionProvider" in op.check_used([op.CUDA, op.CPU], op.active_providers(sess))
    assert op.check_used([op.CPU], [op.CPU]) is None and op.device_of([op.CPU]) == "cpu"
    assert op.device_of([op.TENSORRT, op.CUDA, op.CPU]) == "cuda"


def test_node_placement_from_profile(tmp_path):
    from safetensors.numpy import load_file

    folder = te.make_folder(tmp_path / "export")
    sess = _session(folder, ["cpu"], tmp_path)
    feed = {**load_file(str(folder / "experts.safetensors")), **load_file(str(folder / "routers.safetensors"))}
    feed.update(input_ids=np.array([[1, 2]]), attention_mask=np.ones((1, 2), np.int64),
                position_ids=np.array([[0, 1]]), router_mix=np.full((1, te.N_ROUTERS), 0.25, np.float32))
    for i in range(te.LAYERS):
        for w in ("key", "value"):
            feed[f"past_key_values.{i}.{w}"] = np.zeros((1, te.KV_HEADS, 0, te.HEAD_DIM), np.float32)
    sess.run(None, feed)
    placement = op.node_placement(sess.end_profiling())
    assert set(placement) == {op.CPU} and placement[op.CPU] > 10
    with pytest.raises(BackendError, match="cannot read"):
        op.node_placement(tmp_path / "missing.json")
