"""`hoe export --attention-kernel`: each layer's attention as hoe's Attention op (runtime/csrc/attention.h) in
place of GroupQueryAttention validates against PyTorch on several architectures, plain and with the experts baked
into the Mixture kernel; the check sees a wrong graph; it is refused where it cannot work. The runtime side (300
tokens, the buffer's growth, switches, threads) is tests/runtime/test_runtime_fused.py."""

import json

import onnx
import pytest
from hoe.core.errors import ConfigError
from hoe.export.onnx_export import ExportConfig, export
from hoe.export.validate import ValidationConfig, validate_export
from hoe.runtime import kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")

FAST = dict(threads=1, decode_steps=3, quality_prompts=0)


@pytest.fixture(scope="module")
def kernel_export(tmp_path_factory):
    """(arch, bake) -> (base_dir, ckpt_dir, out, validation report), exported once per module."""
    from tiny_models import tiny_hoe

    done = {}

    def get(arch, bake=False, kv_cache="auto"):
        if (arch, bake, kv_cache) not in done:
            root = tmp_path_factory.mktemp(f"attention_{arch}{'_baked' * bake}_{kv_cache}")
            base, ckpt = tiny_hoe(arch, root)
            base_dir, ckpt_dir = root / "base", root / "hoe"
            base.save_pretrained(base_dir)
            ckpt.save(ckpt_dir)
            export(base_dir, ckpt_dir, root / "out", ExportConfig(threads=1, validate=False, attention_kernel=True,
                                                                  bake_experts=bake, mixture_kernel=bake,
                                                                  kv_cache=kv_cache))
            report = validate_export(root / "out", base_dir, ckpt_dir, ValidationConfig(**FAST))
            done[arch, bake, kv_cache] = (base_dir, ckpt_dir, root / "out", report)
        return done[arch, bake, kv_cache]

    return get


@pytest.mark.parametrize("bake", [False, True], ids=["experts-as-inputs", "baked-mixture-kernel"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_attention_kernel_graph_validates(kernel_export, arch, bake):
    _, _, out, report = kernel_export(arch, bake)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    manifest = json.loads((out / "hoe_config.json").read_text())
    assert manifest["kv_cache"]["kernel"] == kernels.ATTENTION_KERNEL and manifest["kv_cache"]["shared_buffer"]
    ops = [(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count(("hoe.ort", "Attention")) == 2  # one per layer
    assert ("com.microsoft", "GroupQueryAttention") not in ops
    assert ("com.microsoft", "RotaryEmbedding") not in ops  # rotary inside the kernel
    assert ops.count(("hoe.ort", "Mixture")) == (2 * 4 if bake else 0)


def test_attention_kernel_parity_can_fail(kernel_export, tmp_path):
    """The same graph with every Attention node's scale 10 % off: the validation against PyTorch fails."""
    import shutil

    base_dir, ckpt_dir, out, _ = kernel_export("llama")
    folder = tmp_path / "wrong"
    shutil.copytree(out, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "Attention":
            scale = next(a for a in node.attribute if a.name == "scale")
            scale.f *= 1.1
    onnx.save(model, str(folder / "model.onnx"))
    report = validate_export(folder, base_dir, ckpt_dir, ValidationConfig(**FAST))
    assert not report["passed"]


@pytest.mark.parametrize("bake", [False, True], ids=["experts-as-inputs", "baked-mixture-kernel"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_int8_cache_graph_validates(kernel_export, arch, bake):
    """--kv-cache int8: AttentionInt8 per layer, int8 rows [B,Hkv,P,D+4] in and out; the same logits as PyTorch on
    the same rounded past, each side's own rounding of the new columns at most one step from the other's."""
    _, _, out, report = kernel_export(arch, bake, "int8")
    assert report["passed"] and report["argmax_agreement"] == 1.0, report["max_abs_logits"]
    assert report["kv_cache"]["dtype"] == "int8" and report["kv_cache"]["max_steps_apart"] <= 1
    manifest = json.loads((out / "hoe_config.json").read_text())
    assert manifest["kv_cache"]["dtype"] == "int8" and manifest["kv_cache"]["kernel"] == kernels.ATTENTION_KERNEL
    d = manifest["architecture"]["head_dim"]
    for name in ("past_key_values.0.key", "present.1.value"):
        spec = (manifest["inputs"] | manifest["outputs"])[name]
        assert spec["dtype"] == "int8" and spec["shape"][1:] == [manifest["architecture"]["num_kv_heads"],
                                                                 spec["shape"][2], d + 4]
    ops = [(n.domain, n.op_type) for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count(("hoe.ort", "AttentionInt8")) == 2 and ("hoe.ort", "Attention") not in ops


def test_int8_cache_parity_can_fail(kernel_export, tmp_path):
    """The int8 graph with every AttentionInt8 node's scale 10 % off: the validation fails."""
    import shutil

    base_dir, ckpt_dir, out, _ = kernel_export("llama", False, "int8")
    folder = tmp_path / "wrong"
    shutil.copytree(out, folder)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for node in model.graph.node:
        if node.op_type == "AttentionInt8":
            next(a for a in node.attribute if a.name == "scale").f *= 1.1
    onnx.save(model, str(folder / "model.onnx"))
    assert not validate_export(folder, base_dir, ckpt_dir, ValidationConfig(**FAST))["passed"]


def test_int8_cache_rounding_matches_numpy():
    """The rounding the op and the references share (hoe.contract.kv_int8): half a step at most, zero rows 0."""
    import numpy as np
    from hoe.contract import kv_int8

    x = np.random.default_rng(0).normal(size=(3, 5, 64)).astype(np.float32)
    x[0, 0] = 0
    rows = kv_int8.quantize(x)
    assert rows.dtype == np.int8 and rows.shape == (3, 5, 68)
    scale = kv_int8.scales(rows)
    assert (scale[0, 0] == 0).all() and (rows[0, 0] == 0).all()
    assert (np.abs(kv_int8.dequantize(rows) - x) <= scale / 2 * (1 + 1e-6)).all()
    assert np.abs(rows[..., :64]).max() == 127 and kv_int8.steps_apart(rows, rows) == 0
    bumped = rows.copy()
    bumped[1, 2, 7] += 1
    assert kv_int8.steps_apart(rows, bumped) == 1


def test_eager_fused_attention_on_an_int8_cache_matches_the_op():
    """hoe::gqa run in PyTorch on an int8 past (what the fused module computes outside the graph): the same
    output and the same new rows as the AttentionInt8 op (no rotation: cos 1, sin 0)."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from hoe.contract import kv_int8
    from hoe.export import fused_attention  # noqa: F401  (registers hoe::gqa)
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    b, t, p, h, hkv, d = 2, 3, 5, 4, 2, 16
    q = rng.normal(size=(b, t, h * d)).astype(np.float32)
    k, v = (rng.normal(size=(b, t, hkv * d)).astype(np.float32) for _ in range(2))
    past = [kv_int8.quantize(rng.normal(size=(b, hkv, p, d)).astype(np.float32)) for _ in range(2)]
    bias = np.zeros((b, 1, t, p + t), np.float32)
    for i in range(t):
        bias[:, 0, i, p + i + 1:] = np.finfo(np.float32).min
    cos, sin = torch.ones(8, d // 2), torch.zeros(8, d // 2)
    tensors = [torch.from_numpy(a) for a in (q, k, v, *past)]
    out, pk, pv = torch.ops.hoe.gqa(*tensors, torch.zeros(b, t, dtype=torch.long), torch.from_numpy(bias), cos, sin,
                                    h, hkv, d ** -0.5)
    names = ["q", "k", "v", "past_key", "past_value", "bias"]
    types = [TensorProto.INT8 if n.startswith("past") else TensorProto.FLOAT for n in names]
    node = helper.make_node("AttentionInt8", names, ["out", "pk", "pv"], domain="hoe.ort", num_heads=h,
                            kv_num_heads=hkv, scale=d ** -0.5)
    graph = helper.make_graph([node], "a", [helper.make_tensor_value_info(n, ty, None) for n, ty in zip(names, types)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
                              + [helper.make_tensor_value_info(n, TensorProto.INT8, None) for n in ("pk", "pv")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    want = session.run(None, dict(zip(names, (q, k, v, *past, bias))))
    np.testing.assert_allclose(out.numpy(), want[0], rtol=1e-5, atol=1e-5)
    assert kv_int8.steps_apart(pk.numpy(), want[1]) <= 1 and kv_int8.steps_apart(pv.numpy(), want[2]) <= 1


@pytest.mark.parametrize("fields, message", [
    (dict(target="tensorrt"), "needs an fp32 graph and target ort-cpu"),
    (dict(dtype="fp16"), "needs an fp32 graph and target ort-cpu"),
])
def test_attention_kernel_is_refused_where_it_cannot_work(fields, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(attention_kernel=True, **fields)


def test_int8_cache_needs_the_attention_kernel():
    with pytest.raises(ConfigError, match="--kv-cache int8 needs --attention-kernel"):
        ExportConfig(kv_cache="int8")
    with pytest.raises(ConfigError, match=r"kv_cache must be one of \['auto', 'int8'\], got 'fp8'"):
        ExportConfig(attention_kernel=True, kv_cache="fp8")


def test_attention_kernel_needs_fused_attention(tiny_folders, tmp_path, monkeypatch):
    """A family whose attention the fused module does not reproduce (Gemma's soft-capping, Phi-3's qkv, ...)."""
    import hoe.export.fused_attention as fa

    base_dir, ckpt_dir = tiny_folders(tmp_path, "llama")
    monkeypatch.setattr(fa, "supported", lambda model: False)
    with pytest.raises(ConfigError, match="--attention-kernel replaces the fused attention"):
        export(base_dir, ckpt_dir, tmp_path / "out", ExportConfig(threads=1, validate=False, attention_kernel=True))
