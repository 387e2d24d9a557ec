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

    def get(arch, bake=False):
        if (arch, bake) not in done:
            root = tmp_path_factory.mktemp(f"attention_{arch}{'_baked' * bake}")
            base, ckpt = tiny_hoe(arch, root)
            base_dir, ckpt_dir = root / "base", root / "hoe"
            base.save_pretrained(base_dir)
            ckpt.save(ckpt_dir)
            export(base_dir, ckpt_dir, root / "out", ExportConfig(threads=1, validate=False, attention_kernel=True,
                                                                  bake_experts=bake, mixture_kernel=bake))
            report = validate_export(root / "out", base_dir, ckpt_dir, ValidationConfig(**FAST))
            done[arch, bake] = (base_dir, ckpt_dir, root / "out", report)
        return done[arch, bake]

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
    assert ops.count(("com.microsoft", "RotaryEmbedding")) == 2 * 2  # q and k per layer, outside the kernel
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


@pytest.mark.parametrize("fields, message", [
    (dict(target="tensorrt"), "needs an fp32 graph and target ort-cpu"),
    (dict(dtype="fp16"), "needs an fp32 graph and target ort-cpu"),
])
def test_attention_kernel_is_refused_where_it_cannot_work(fields, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(attention_kernel=True, **fields)


def test_attention_kernel_needs_fused_attention(tiny_folders, tmp_path, monkeypatch):
    """A family whose attention the fused module does not reproduce (Gemma's soft-capping, Phi-3's qkv, ...)."""
    import hoe.export.fused_attention as fa

    base_dir, ckpt_dir = tiny_folders(tmp_path, "llama")
    monkeypatch.setattr(fa, "supported", lambda model: False)
    with pytest.raises(ConfigError, match="--attention-kernel replaces the fused attention"):
        export(base_dir, ckpt_dir, tmp_path / "out", ExportConfig(threads=1, validate=False, attention_kernel=True))
