"""Torch-free parts: I/O shape binding, the manifest's hashing and checks, the TensorRT readiness rules."""

import json

import numpy as np
import onnx
import pytest
from hoe.contract import manifest as mf
from hoe.contract.io_spec import ModelDims, TensorSpec, bind_shapes, expert_tensor_specs, graph_inputs, graph_outputs
from hoe.core import names, packing
from hoe.core.config import sha256_file
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError
from hoe.core.packing import SiteGroup
from hoe.export.trt_ops import check_model
from onnx import TensorProto, helper

GROUPS = [SiteGroup(("a.q", "a.k"), 8, (6, 2)), SiteGroup(("a.o",), 6, (8,))]


def test_bind_shapes_checks_fixed_symbolic_and_product_dims():
    specs = [TensorSpec("x", "float32", ("experts", "rank", 8)), TensorSpec("m", "float32", ("routers", "experts"))]
    specs += expert_tensor_specs(GROUPS, "float32")
    e, r, k = 3, 4, 5
    shapes = {"x": (e, r, 8), "m": (k, e), "experts.a.q+k.lora_A.packed": (8, 2 * e * r),
              "experts.a.q.lora_B.packed": (e * r, 6), "experts.a.k.lora_B.packed": (e * r, 2),
              "experts.a.o.lora_A.packed": (6, e * r), "experts.a.o.lora_B.packed": (e * r, 8),
              "routers.a.q+k.weight.packed": (8, 2 * k * e), "routers.a.q+k.bias.packed": (2 * k * e,),
              "routers.a.o.weight.packed": (6, k * e), "routers.a.o.bias.packed": (k * e,)}
    assert set(shapes) == {s.name for s in specs}
    assert bind_shapes(specs, shapes) == {"experts": 3, "rank": 4, "routers": 5}
    assert bind_shapes(specs[2:], {n: v for n, v in shapes.items() if n not in ("x", "m")},
                       known={"experts": e, "rank": r, "routers": k}) == {"experts": 3, "rank": 4, "routers": 5}
    with pytest.raises(ShapeMismatchError, match=r"x: expected shape \['experts', 'rank', 8\], got \[3, 4, 7\]"):
        bind_shapes(specs, {**shapes, "x": (3, 4, 7)})
    with pytest.raises(ShapeMismatchError, match="'rank' is 2, but hoe.json has rank=4"):
        bind_shapes(specs, {**shapes, "x": (3, 2, 8)}, known={"rank": 4})
    with pytest.raises(ShapeMismatchError, match=r"q\+k.lora_A.packed: expected shape \[8, '2\*experts\*rank'\] "
                                                 r"with experts=3, rank=4, got \[8, 12\]"):
        bind_shapes(specs, {**shapes, "experts.a.q+k.lora_A.packed": (8, 12)})
    with pytest.raises(ShapeMismatchError, match="routers.a.o.bias.packed is missing"):
        bind_shapes(specs, {k_: v for k_, v in shapes.items() if k_ != "routers.a.o.bias.packed"})
    with pytest.raises(ConfigError, match="needs 'routers', which nothing binds"):
        bind_shapes([expert_tensor_specs(GROUPS, "float32")[-1]], {"routers.a.o.bias.packed": (15,)})


def test_pack_unpack_round_trip_and_errors():
    rng = np.random.default_rng(0)
    e, r, k = 2, 3, 4
    tensors = {names.ROUTER_MASK: (rng.random((k, e)) > 0.3).astype(np.float32)}
    tensors[names.ROUTER_MASK][:, 0] = 1.0
    for g in GROUPS:
        for module, d_out in zip(g.modules, g.d_outs):
            tensors[names.lora_a(module)] = rng.standard_normal((e, r, g.d_in)).astype(np.float32)
            tensors[names.lora_b(module)] = rng.standard_normal((e, d_out, r)).astype(np.float32)
            tensors[names.scaling(module)] = np.array([0.5, 2.0], dtype=np.float32)
            tensors[names.router_weight(module)] = rng.standard_normal((k, e, g.d_in)).astype(np.float32)
            tensors[names.router_bias(module)] = rng.standard_normal((k, e)).astype(np.float32)
    packed = packing.pack(tensors, GROUPS, "float32")
    assert set(packed) == set(packing.expert_names(GROUPS) + packing.router_names(GROUPS))
    qk = GROUPS[0]
    # x·A_packed gives module k's expert 1 in columns (1·E + 1)·r ..
    x = rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose((x @ packed[packing.lora_a(qk)])[(e + 1) * r:(e + 2) * r],
                               tensors[names.lora_a("a.k")][1] @ x, rtol=1e-5)
    bias = packed[packing.router_bias(qk)].reshape(2, k, e)
    assert np.array_equal(np.isinf(bias[1]), tensors[names.ROUTER_MASK] == 0)
    back = packing.unpack(packed, GROUPS, e, r, k)
    assert set(back) == set(tensors)
    for g in GROUPS:
        for module in g.modules:
            np.testing.assert_array_equal(back[names.lora_a(module)], tensors[names.lora_a(module)])
            np.testing.assert_allclose(back[names.lora_b(module)], tensors[names.lora_b(module)]
                                       * tensors[names.scaling(module)][:, None, None], rtol=1e-6)
            np.testing.assert_array_equal(back[names.scaling(module)], np.ones(e, np.float32))
            np.testing.assert_array_equal(back[names.router_weight(module)], tensors[names.router_weight(module)])
    assert packing.pack(tensors, GROUPS, "float16")[packing.lora_a(qk)].dtype == np.float16
    with pytest.raises(ShapeMismatchError, match=r"experts.a.k.lora_B: expected shape \[2, 2, 3\], got \[2, 5, 3\]"):
        packing.pack({**tensors, names.lora_b("a.k"): np.zeros((e, 5, r), np.float32)}, GROUPS, "float32")
    with pytest.raises(CheckpointError, match="routers.a.o.bias is missing"):
        packing.pack({n: v for n, v in tensors.items() if n != names.router_bias("a.o")}, GROUPS, "float32")


def test_graph_io_order_and_names():
    dims = ModelDims(num_layers=2, num_kv_heads=3, head_dim=4, vocab_size=11, dtype="float16")
    hoe = expert_tensor_specs(GROUPS, "float16")
    names = [s.name for s in graph_inputs(dims, hoe)]
    assert names[:8] == ["input_ids", "attention_mask", "position_ids", "router_mix", "past_key_values.0.key",
                         "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert names[8:] == [s.name for s in hoe]
    assert "router_mix" not in [s.name for s in graph_inputs(dims, None)]
    outs = graph_outputs(dims)
    assert outs[0] == TensorSpec("logits", "float16", ("batch", "sequence", 11))
    assert outs[1].shape == ("batch", 3, "total_sequence", 4)


def _folder(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"graph")
    (tmp_path / "tokenizer.json").write_text("{}")
    data = {"format_version": 2, "model": {}, "architecture": {}, "inputs": {}, "outputs": {}, "kv_cache": {},
            "hoe": mf.hoe_section(None, [], [], []), "files": {}, "tokens": {}, "generation": {}, "tools": {}}
    return mf.write_manifest(tmp_path, data)


def test_manifest_hashes_every_file_and_detects_changes(tmp_path):
    written = _folder(tmp_path)
    assert set(written["sha256"]) == {"model.onnx", "tokenizer.json"}
    assert mf.load_manifest(tmp_path, verify=True)["sha256"] == written["sha256"]
    (tmp_path / mf.VALIDATION_FILE).write_text("{}")  # not hashed
    (tmp_path / "model.onnx").write_bytes(b"other graph")
    with pytest.raises(CheckpointError, match="model.onnx: sha256 mismatch, expected"):
        mf.load_manifest(tmp_path, verify=True)
    refreshed = mf.refresh_hashes(tmp_path)
    assert refreshed["sha256"]["model.onnx"] == sha256_file(tmp_path / "model.onnx")
    mf.load_manifest(tmp_path, verify=True)


def test_manifest_refuses_bad_content(tmp_path):
    with pytest.raises(CheckpointError, match="hoe_config.json not found"):
        mf.load_manifest(tmp_path)
    (tmp_path / mf.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        mf.load_manifest(tmp_path)
    (tmp_path / mf.MANIFEST_FILE).write_text(json.dumps({"format_version": 9}))
    with pytest.raises(ConfigError, match="format_version 9 is not one this hoe reads"):
        mf.load_manifest(tmp_path)
    (tmp_path / mf.MANIFEST_FILE).write_text(json.dumps({"format_version": 2, "model": {}}))
    with pytest.raises(ConfigError, match="lacks sections"):
        mf.load_manifest(tmp_path)


def test_manifest_module_is_torch_free():
    import subprocess
    import sys

    code = "import sys, hoe.contract.manifest, hoe.contract.io_spec, hoe.export; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------------------- TensorRT readiness


def _model(nodes, inputs, outputs, initializers=(), opset=20, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, 1) for d in extra_opsets]]
    return helper.make_model(graph, opset_imports=opsets)


def _vi(name, dtype=TensorProto.FLOAT, shape=("b", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


def test_trt_ready_graph():
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [helper.make_node("Softmax", ["x"], ["s"], axis=-1), helper.make_node("ReduceSum", ["s", "axes"], ["y"])]
    report = check_model(_model(nodes, [_vi("x")], [_vi("y", shape=("b", 1))], [axes]))
    assert report.ready, report.problems
    assert report.op_counts == {"Softmax": 1, "ReduceSum": 1}


@pytest.mark.parametrize("case, match", [
    ("foreign_domain", "domain 'com.microsoft'"),
    ("unsupported_op", "op type StringNormalizer is not supported"),
    ("double", "dtype DOUBLE"),
    ("cast_double", "'to' has dtype DOUBLE"),
    ("dynamic_axes", "must be a build-time constant"),
    ("opset", "opset 21 is outside"),
])
def test_trt_problems(case, match):
    x, y = _vi("x"), _vi("y")
    nodes, inputs, inits, opset, extra = [helper.make_node("Relu", ["x"], ["y"])], [x], [], 20, []
    if case == "foreign_domain":
        nodes, extra = [helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")], ["com.microsoft"]
    elif case == "unsupported_op":
        nodes = [helper.make_node("StringNormalizer", ["x"], ["y"])]
    elif case == "double":
        inputs = [_vi("x", TensorProto.DOUBLE)]
    elif case == "cast_double":
        nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE), helper.make_node("Relu", ["d"], ["y"])]
    elif case == "dynamic_axes":
        inputs = [x, _vi("axes", TensorProto.INT64, (1,))]
        nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"])]
    elif case == "opset":
        opset = 21
    report = check_model(_model(nodes, inputs, [y], inits, opset, extra))
    assert not report.ready
    assert any(match in p for p in report.problems), report.problems
    assert "NOT READY" in report.summary()


def test_trt_check_reads_files_without_external_data(tmp_path):
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x")], [_vi("y")], [weight])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    assert check_model(tmp_path / "m.onnx").ready
