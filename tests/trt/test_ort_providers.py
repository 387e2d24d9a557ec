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
    assert trt["trt_engine_cache_enable"] == "True" and (tmp_path / "ort_trt_engines").is_dir()
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort_trt_engines")
    assert trt["trt_fp16_enable"] == "True" and trt["trt_max_workspace_size"] == str(512 << 20)
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
    names, options = op.resolve([("tensorrt", {"trt_fp16_enable": True})], cache_dir=tmp_path)
    assert options[0]["trt_fp16_enable"] == "True"
    with pytest.raises(BackendError, match=r"'trt_fp16_enable': '1'.*only 'True' or 'False'"):
        op.resolve([("tensorrt", {"trt_fp16_enable": 1})], cache_dir=tmp_path)


# ---------------------------------------------------------------------------- what onnxruntime-gpu accepts
#
# The option values are checked against the rules of onnxruntime's own parsers (read in onnxruntime 1.23.0's
# sources; the TensorRT messages below are also in the onnxruntime-gpu 1.31.1 wheel's onnxruntime_pybind11_state
# library, and that wheel rejected "0"/"1" and took "True"/"False" when tried on the development machine):
#  * TensorRT EP: onnxruntime/python/onnxruntime_pybind_state.cc, CreateExecutionProviderFactoryInstance (the
#    kTensorrtExecutionProvider branch parses each option itself): booleans only "True"/"true"/"False"/"false"
#    ("The value for the key 'trt_fp16_enable' should be 'True' or 'False'"), device_id and the other counts
#    through std::stoi, trt_max_workspace_size through std::stoull, paths and shape lists must not be empty,
#    an unknown key throws "Invalid TensorRT EP option". The throw is a RuntimeError, which
#    onnxruntime_inference_collection.py's InferenceSession.__init__ catches to retry with the fallback
#    providers and no options at all ("EP Error ... Falling back to ...").
#  * CUDA EP: onnxruntime/core/providers/cuda/cuda_execution_provider_info.cc,
#    CUDAExecutionProviderInfo::FromProviderOptions (a ProviderOptionsParser,
#    include/onnxruntime/core/framework/provider_options_utils.h: an unknown key is "Unknown provider option");
#    booleans through TryParseStringWithClassicLocale(bool) in include/onnxruntime/core/common/parse_string.h,
#    which takes "0"/"1"/"False"/"True"/"false"/"true"; arena_extend_strategy and cudnn_conv_algo_search by name
#    (arena_extend_strategy_mapping, ort_cudnn_conv_algo_search_mapping).

_TRT_BOOL = ("True", "true", "False", "false")
_TRT_KINDS = {"device_id": "int", "trt_max_workspace_size": "uint", "trt_max_partition_iterations": "int",
              "trt_min_subgraph_size": "int", "trt_builder_optimization_level": "int", "trt_fp16_enable": "bool",
              "trt_engine_cache_enable": "bool", "trt_timing_cache_enable": "bool", "trt_engine_cache_path": "str",
              "trt_timing_cache_path": "str", "trt_profile_min_shapes": "str", "trt_profile_opt_shapes": "str",
              "trt_profile_max_shapes": "str", "trt_cuda_graph_enable": "bool", "trt_force_timing_cache": "bool"}
_CUDA_BOOL = ("0", "1", "False", "True", "false", "true")
_CUDA_KINDS = {"device_id": "int", "gpu_mem_limit": "uint", "do_copy_in_default_stream": "bool",
               "enable_cuda_graph": "bool", "use_tf32": "bool",
               "arena_extend_strategy": ("kNextPowerOfTwo", "kSameAsRequested"),
               "cudnn_conv_algo_search": ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")}


def _rejected(options: dict[str, str], kinds: dict, booleans: tuple[str, ...]) -> list[str]:
    """The options onnxruntime's parser would reject, with why (the rules above)."""
    import re

    bad = []
    for key, value in options.items():
        kind = kinds.get(key)
        if not isinstance(value, str):
            bad.append(f"{key}: {value!r} is not a string")
        elif kind is None:
            bad.append(f"{key}: unknown option")
        elif isinstance(kind, tuple):
            bad += [f"{key}: {value!r} not in {kind}"] if value not in kind else []
        elif kind == "bool" and value not in booleans:
            bad.append(f"{key}: {value!r} is not one of {booleans}")
        elif kind in ("int", "uint") and not re.fullmatch(r"\d+" if kind == "uint" else r"-?\d+", value):
            bad.append(f"{key}: {value!r} is not an integer")
        elif kind == "str" and not value:
            bad.append(f"{key}: empty")
    return bad


def test_rules_catch_what_the_binding_rejects():
    """The rules themselves: the values this module used to pass ("1"/"0") are rejected for TensorRT only."""
    assert _rejected({"trt_fp16_enable": "0"}, _TRT_KINDS, _TRT_BOOL)
    assert _rejected({"trt_engine_cache_enable": "1"}, _TRT_KINDS, _TRT_BOOL)
    assert _rejected({"trt_bogus": "True"}, _TRT_KINDS, _TRT_BOOL)
    assert not _rejected({"do_copy_in_default_stream": "1"}, _CUDA_KINDS, _CUDA_BOOL)
    assert _rejected({"arena_extend_strategy": "same"}, _CUDA_KINDS, _CUDA_BOOL)


@pytest.mark.parametrize("settings", [op.ProviderSettings(), op.ProviderSettings(fp16=True, cuda_graph=True,
                                                                                  gpu_mem_limit_mb=4096)])
def test_session_options_are_values_the_binding_accepts(tmp_path, settings):
    profile = {k: {"input_ids": [1, 1]} for k in ("min", "opt")} | {"max": {"input_ids": [4, 256]}}
    names, options = op.provider_options(["tensorrt"], tmp_path, settings, profile)
    assert names == [op.TENSORRT, op.CUDA, op.CPU]
    assert _rejected(options[0], _TRT_KINDS, _TRT_BOOL) == []
    assert _rejected(options[1], _CUDA_KINDS, _CUDA_BOOL) == []
    _, cuda_only = op.provider_options(["cuda"], tmp_path, settings)
    assert _rejected(cuda_only[0], _CUDA_KINDS, _CUDA_BOOL) == []


def test_session_options_against_the_installed_binding(tmp_path):
    """Where onnxruntime-gpu is installed (not on the dev/CI machines, which have the CPU wheel): its own parser
    reads our TensorRT options. It parses them before it loads the TensorRT libraries, so this runs even without
    TensorRT or a GPU: a value it rejects raises here instead of being hidden by InferenceSession's fallback."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, save

    if op.TENSORRT not in ort.get_available_providers():
        pytest.skip(f"onnxruntime {ort.__version__} has no TensorRT provider (providers "
                    f"{ort.get_available_providers()}); the rules above were checked instead")
    from onnxruntime.capi import _pybind_state as C

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    save(model, str(tmp_path / "relu.onnx"))
    names, options = op.provider_options(["tensorrt"], tmp_path, op.ProviderSettings(fp16=True))
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = C.InferenceSession(so, str(tmp_path / "relu.onnx"), True, False)
    sess.initialize_session(names, options, set())  # RuntimeError "... should be 'True' or 'False'" if rejected
    bad = dict(options[0], trt_fp16_enable="1")
    with pytest.raises(RuntimeError, match="should be 'True' or 'False'"):
        C.InferenceSession(so, str(tmp_path / "relu.onnx"), True, False).initialize_session(names, [bad, {}, {}],
                                                                                            set())


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
