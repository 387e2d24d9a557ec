"""hoe export on tiny Llama / Qwen2 / Mistral: parity with PyTorch, the contract in hoe_config.json,
TensorRT readiness, fp16, the plain base graph, expert swap without re-export."""

import json

import numpy as np
import onnx
import pytest
from hoe.contract import manifest as mf
from hoe.core import names, packing
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError, UnsupportedModelError
from hoe.export.onnx_export import ExportConfig, export
from hoe.export.validate import ValidationConfig, validate_export

ARCHS = ("llama", "qwen2", "mistral")


def graph_io(out_dir):
    model = onnx.load(str(out_dir / mf.MODEL_FILE), load_external_data=False)
    return model, [i.name for i in model.graph.input], [o.name for o in model.graph.output]


@pytest.mark.parametrize("arch", ARCHS)
def test_export_matches_pytorch(tiny_export, arch):
    _, _, out, result = tiny_export(arch)
    v = json.loads((out / mf.VALIDATION_FILE).read_text())
    assert v["passed"] and v["max_abs_logits"] < 1e-4, v["max_abs_logits"]
    assert v["n_cases"] >= 3 and v["steps_per_case"] >= 6 and v["batch"] == 2
    assert len(set(v["prompt_lengths"])) == 2  # one row is left padded
    assert all(v["outputs"][n]["max_abs"] < 1e-4 for n in v["outputs"]), v["outputs"]
    assert v["argmax_agreement"] == 1.0
    mixes = [np.array(c["router_mix"]) for c in v["cases"]]
    assert any(not np.allclose(m[0], m[1]) for m in mixes)  # rows route differently
    assert result.validation["max_abs_logits"] == v["max_abs_logits"]


@pytest.mark.parametrize("arch", ARCHS)
def test_tensorrt_ready(tiny_export, arch):
    from hoe.export.trt_ops import check_model

    _, _, out, result = tiny_export(arch, "tensorrt")
    assert result.validation["passed"] and result.validation["max_abs_logits"] < 1e-4
    assert mf.load_manifest(out)["model"]["target"] == "tensorrt"
    report = check_model(out / mf.MODEL_FILE)
    assert report.ready, report.problems
    assert result.trt["ready"] and result.trt["op_counts"] == report.op_counts
    # one router softmax per input-sharing group (q/k/v, o, gate/up, down) + attention, per layer, 2 layers
    assert report.op_counts["Softmax"] == 2 * 4 + 2


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_graph_for_onnxruntime(tiny_export, arch):
    """--target ort-cpu (default): one GroupQueryAttention and two RotaryEmbedding per layer, RMSNorm fused,
    and the past tensors feed nothing but GQA (no Concat or Slice copies a shared buffer)."""
    _, _, out, result = tiny_export(arch)
    manifest = mf.load_manifest(out)
    assert manifest["model"]["target"] == "ort-cpu" and manifest["kv_cache"]["shared_buffer"] is True
    assert result.trt["skipped"] and result.trt["ready"] is None
    model, inputs, _ = graph_io(out)
    ops = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    layers = manifest["architecture"]["num_layers"]
    assert ops["GroupQueryAttention"] == layers and ops["RotaryEmbedding"] == 2 * layers
    assert ops.get("SkipSimplifiedLayerNormalization", 0) + ops.get("SimplifiedLayerNormalization", 0) == 2 * layers + 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal"} & set(ops), ops
    assert ops["Softmax"] == layers * 4  # only the routers' (one per input-sharing group); attention's is in GQA
    past = {n for n in inputs if n.startswith("past_key_values.")}
    readers = {(n.op_type, n.domain) for n in model.graph.node for i in n.input if i in past}
    assert readers <= {("GroupQueryAttention", "com.microsoft"), ("Shape", "")}, readers  # Shape: batch size only


@pytest.mark.parametrize("arch", ARCHS)
def test_manifest_is_the_graph_contract(tiny_export, arch):
    _, ckpt_dir, out, _ = tiny_export(arch)
    manifest = mf.load_manifest(out, verify=True)  # every sha256 checks out
    _, inputs, outputs = graph_io(out)
    assert list(manifest["inputs"]) == inputs and list(manifest["outputs"]) == outputs
    assert inputs[:4] == ["input_ids", "attention_mask", "position_ids", "router_mix"]
    from safetensors import safe_open

    hoe = manifest["hoe"]
    for key, declared in (("experts", hoe["expert_inputs"]), ("routers", hoe["router_inputs"])):
        with safe_open(out / manifest["files"][key], "np") as f:
            assert sorted(f.keys()) == sorted(declared)
            for name in declared:
                spec = manifest["inputs"][name]
                assert f.get_tensor(name).dtype == np.dtype(spec["dtype"])
    groups = mf.groups_of(manifest)
    assert [len(g.modules) for g in groups] == [3, 1, 2, 1] * 2  # q/k/v, o, gate/up, down per layer
    assert sorted(m for g in groups for m in g.modules) == sorted(hoe["target_modules"])
    assert hoe["expert_inputs"] + hoe["router_inputs"] == packing.expert_names(groups) + packing.router_names(groups)
    qkv = groups[0]
    assert qkv.name.endswith("self_attn.q_proj+k_proj+v_proj")
    assert manifest["inputs"][packing.lora_a(qkv)]["shape"] == [qkv.d_in, "3*experts*rank"]
    assert manifest["inputs"][packing.router_bias(qkv)]["shape"] == ["3*routers*experts"]
    assert manifest["inputs"][packing.lora_b(qkv.modules[1])]["shape"] == ["experts*rank", qkv.d_outs[1]]
    assert manifest["inputs"]["router_mix"]["shape"] == ["batch", "routers"]
    assert manifest["outputs"]["present.0.key"]["shape"][2] == "total_sequence"
    assert hoe["enabled"] and hoe["n_experts"] == 3 and hoe["n_routers"] == 4
    assert set(manifest["sha256"]) == {p.name for p in out.iterdir()} - set(mf.UNHASHED)
    assert (out / mf.HOE_FILE).read_text() == (ckpt_dir / mf.HOE_FILE).read_text()


@pytest.mark.parametrize("arch", ARCHS)
def test_projections_reading_one_input_are_packed(tiny_export, arch):
    """q/k/v and gate/up are one MatMul each (qwen2 with its q/k/v biases packed too); validation passed above
    on this graph, so the packing is exact."""
    _, _, out, result = tiny_export(arch)
    graph = onnx.load(out / mf.MODEL_FILE, load_external_data=False).graph
    layers = json.loads((out / mf.MANIFEST_FILE).read_text())["architecture"]["num_layers"]
    weights = [i.name for i in graph.initializer if i.name.endswith("packed_weight")]
    biases = [n.name for n in graph.node if n.name.endswith("packed_bias_add")]  # equal biases share one tensor
    assert len(weights) == 2 * layers and sum("self_attn" in w for w in weights) == layers
    assert len(biases) == (layers if arch == "qwen2" else 0)
    assert not any(i.name.endswith(("q_proj.linear.weight", "up_proj.linear.weight")) for i in graph.initializer)
    assert result.validation["passed"]


def test_validator_catches_a_wrong_graph_input(tiny_export, tmp_path):
    """The parity check can fail: experts that differ from the reference's are caught."""
    import shutil

    from safetensors.numpy import load_file, save_file

    base_dir, ckpt_dir, out, _ = tiny_export("llama")
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    experts = load_file(str(copy / mf.EXPERTS_FILE))
    name = next(n for n in experts if n.endswith("lora_B.packed"))
    experts[name] = experts[name] * 1.01
    save_file(experts, str(copy / mf.EXPERTS_FILE))
    report = validate_export(copy, base_dir, ckpt_dir, ValidationConfig(threads=1, decode_steps=1))
    assert not report["passed"] and report["max_abs_logits"] > 1e-4


def test_swap_experts_without_reexport(tiny_export, tmp_path):
    """Same E and r, then a different E, r and K: onnxruntime matches a fresh PyTorch reference."""
    import shutil

    from hoe.core.loading import load_base
    from tiny_models import random_hoe_checkpoint

    base_dir, _, out, _ = tiny_export("llama")
    folder = tmp_path / "swapped"
    shutil.copytree(out, folder)
    base = load_base(base_dir)
    ckpt_dir = random_hoe_checkpoint(base, n_experts=3, rank=4, seed=1).save(tmp_path / "c1")
    manifest = mf.swap_experts(folder, ckpt_dir)
    assert (manifest["hoe"]["n_experts"], manifest["hoe"]["rank"], manifest["hoe"]["n_routers"]) == (3, 4, 4)
    mf.load_manifest(folder, verify=True)
    report = validate_export(folder, base_dir, ckpt_dir, ValidationConfig(threads=1, decode_steps=5))
    assert report["passed"] and report["max_abs_logits"] < 1e-4, report["max_abs_logits"]
    # the CLI, with E, r and K all different, and its own parity check
    from hoe.cli.cli import main

    ckpt_dir = random_hoe_checkpoint(base, n_experts=2, rank=3, seed=2).save(tmp_path / "c2")
    assert main(["swap-experts", str(folder), str(ckpt_dir), "--validate", "--base", str(base_dir),
                 "--threads", "1"]) == 0
    manifest = mf.load_manifest(folder, verify=True)
    assert (manifest["hoe"]["n_experts"], manifest["hoe"]["rank"], manifest["hoe"]["n_routers"]) == (2, 3, 3)
    report = json.loads((folder / mf.VALIDATION_FILE).read_text())
    assert report["passed"] and report["max_abs_logits"] < 1e-4, report["max_abs_logits"]


def test_swap_refuses_other_modules(tiny_export, tmp_path):
    from hoe.core.loading import load_base
    from hoe.core.model import find_target_modules
    from tiny_models import random_hoe_checkpoint

    base_dir, _, out, _ = tiny_export("llama")
    base = load_base(base_dir)
    ckpt = random_hoe_checkpoint(base, n_experts=2, rank=2, seed=3)
    keep = find_target_modules(base, ["q_proj", "v_proj"])
    ckpt.config.target_modules = keep
    ckpt.experts = {k: v for k, v in ckpt.experts.items() if any(f".{m}." in f".{k}." for m in keep)}
    ckpt.routers = {k: v for k, v in ckpt.routers.items()
                    if k == names.ROUTER_MASK or any(f".{m}." in f".{k}." for m in keep)}
    folder = ckpt.save(tmp_path / "partial")
    before = (out / mf.MANIFEST_FILE).read_text()
    with pytest.raises(ShapeMismatchError, match="other modules"):
        mf.swap_experts(out, folder)
    assert (out / mf.MANIFEST_FILE).read_text() == before


def test_fp16_export(tmp_path, tiny_folders):
    """fp16 weights/activations; softmax and norm reductions in fp32; parity within fp16 tolerance."""
    base_dir, ckpt_dir = tiny_folders(tmp_path, "qwen2")
    result = export(base_dir, ckpt_dir, tmp_path / "out", ExportConfig(dtype="fp16", threads=1, target="tensorrt"))
    v = result.validation
    assert v["passed"] and v["dtype"] == "fp16" and v["not_validated"], v
    assert v["max_rel_logits"] < 2e-2 and v["argmax_agreement"] >= 0.9
    manifest = mf.load_manifest(tmp_path / "out")
    assert manifest["inputs"]["past_key_values.0.key"]["dtype"] == "float16"
    assert {manifest["inputs"][n]["dtype"] for n in manifest["hoe"]["expert_inputs"]} == {"float16"}
    assert manifest["inputs"]["router_mix"]["dtype"] == "float32"
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tmp_path / "out" / mf.MODEL_FILE),
                                                        load_external_data=False))
    types = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input)}
    fp32 = onnx.TensorProto.FLOAT
    softmax_in = [types.get(n.input[0]) for n in model.graph.node if n.op_type == "Softmax"]
    mean_in = [types.get(n.input[0]) for n in model.graph.node if n.op_type == "ReduceMean"]
    assert softmax_in and all(t == fp32 for t in softmax_in), softmax_in
    assert mean_in and all(t == fp32 for t in mean_in), mean_in
    assert result.trt["ready"], result.trt["problems"]


def test_fp16_fused_export(tmp_path, tiny_folders):
    """fp16 on the onnxruntime target: GroupQueryAttention and the fused norms have fp16 CPU kernels."""
    base_dir, ckpt_dir = tiny_folders(tmp_path, "qwen2")
    result = export(base_dir, ckpt_dir, tmp_path / "out", ExportConfig(dtype="fp16", threads=1))
    v = result.validation
    assert v["passed"] and v["dtype"] == "fp16" and v["max_rel_logits"] < 2e-2 and v["argmax_agreement"] >= 0.9, v
    assert result.trt["op_counts"]["GroupQueryAttention"] == 2


def test_export_base_without_experts(tiny_export, tmp_path, capsys):
    """`hoe export --no-experts` (export_base): the same graph without router_mix and expert inputs."""
    from hoe.cli.cli import main
    from hoe.export.trt_ops import check_model

    base_dir, ckpt_dir, _, _ = tiny_export("llama")
    code = main(["export", "--base", str(base_dir), "--hoe", str(ckpt_dir), "--out", str(tmp_path / "base"),
                 "--no-experts", "--threads", "1", "--target", "tensorrt"])
    printed = capsys.readouterr().out
    assert code == 0 and "READY" in printed and "validation (fp32" in printed, printed
    validation = json.loads((tmp_path / "base" / mf.VALIDATION_FILE).read_text())
    manifest = mf.load_manifest(tmp_path / "base", verify=True)
    _, inputs, outputs = graph_io(tmp_path / "base")
    assert "router_mix" not in inputs and not any(n.startswith(("experts.", "routers.")) for n in inputs)
    assert inputs[:3] == ["input_ids", "attention_mask", "position_ids"] and outputs[0] == "logits"
    assert manifest["hoe"]["enabled"] is False and manifest["model"]["variant"] == "base"
    assert "experts" not in manifest["files"]
    assert validation["passed"] and validation["max_abs_logits"] < 1e-4
    assert check_model(tmp_path / "base" / mf.MODEL_FILE).ready


# ---------------------------------------------------------------------------- refusals before work


def test_refuses_existing_out_dir(tiny_export, tmp_path):
    base_dir, ckpt_dir, _, _ = tiny_export("llama")
    (tmp_path / "out").mkdir()
    with pytest.raises(CheckpointError, match="exists"):
        export(base_dir, ckpt_dir, tmp_path / "out")


def test_refuses_unsupported_architecture(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHead"]}))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*Conv1D"):
        export(tmp_path / "base", None, tmp_path / "out", ExportConfig(experts=False))
    assert not (tmp_path / "out").exists()


def test_refuses_experts_for_another_base(tiny_export, tmp_path):
    from tiny_models import tiny_model

    _, ckpt_dir, _, _ = tiny_export("llama")
    other = tiny_model("llama", seed=5)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(CheckpointError, match="another base"):
        export(tmp_path / "other", ckpt_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_bad_config():
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=17)
    with pytest.raises(ConfigError, match="dtype"):
        ExportConfig(dtype="bf16")
    with pytest.raises(ConfigError, match="target must be one of"):
        ExportConfig(target="ort-gpu")


def test_failed_validation_leaves_out_dir_untouched(tmp_path, monkeypatch, tiny_folders):
    """A parity failure raises ParityError (CLI: exit 1) and keeps the folder aside as OUT.failed."""
    from hoe.cli.cli import main
    from hoe.export import validate

    class Strict(validate.ValidationConfig):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.tol_fp32 = 0.0

    monkeypatch.setattr(validate, "ValidationConfig", Strict)
    base_dir, ckpt_dir = tiny_folders(tmp_path, "mistral")
    code = main(["export", "--base", str(base_dir), "--hoe", str(ckpt_dir), "--out", str(tmp_path / "out")])
    assert code == 1
    assert not (tmp_path / "out").exists()
    report = json.loads((tmp_path / "out.failed" / mf.VALIDATION_FILE).read_text())
    assert report["passed"] is False and report["tolerance"] == 0.0


def test_tied_embeddings_stored_once(tmp_path):
    """lm_head = embed_tokensᵀ: one weight in the graph, read by Gemm(transB=1), parity holds."""
    import torch
    from tiny_models import random_hoe_checkpoint, tiny_config
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.tie_word_embeddings = True
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(cfg).eval()
    base.save_pretrained(tmp_path / "base")
    ckpt_dir = random_hoe_checkpoint(base, n_experts=2, rank=2, seed=0).save(tmp_path / "hoe")
    result = export(tmp_path / "base", ckpt_dir, tmp_path / "out", ExportConfig(threads=1))
    assert result.validation["passed"] and result.validation["max_abs_logits"] < 1e-4
    model, _, _ = graph_io(tmp_path / "out")
    vocab_weights = [list(i.dims) for i in model.graph.initializer if cfg.vocab_size in i.dims]
    assert vocab_weights == [[cfg.vocab_size, cfg.hidden_size]]
    vocab = {i.name for i in model.graph.initializer if cfg.vocab_size in i.dims}
    lm_head = [n for n in model.graph.node if n.op_type == "Gemm" and vocab & set(n.input)]
    assert len(lm_head) == 1 and lm_head[0].attribute[0].name == "transB"


def test_exported_tensors_unpack_to_the_checkpoint(tiny_export):
    """The packed files hold the checkpoint: unpacking gives its tensors (scaling folded into lora_B)."""
    from hoe.core.checkpoint import HoECheckpoint

    _, ckpt_dir, out, _ = tiny_export("qwen2")
    ckpt = HoECheckpoint.load(ckpt_dir)
    got = mf.read_checkpoint_tensors(out)
    want = {n: v.float().numpy() for n, v in {**ckpt.experts, **ckpt.routers}.items()}
    assert set(got) == set(want)
    for module in ckpt.config.target_modules:
        s = want[names.scaling(module)]
        np.testing.assert_allclose(got[names.lora_b(module)], want[names.lora_b(module)] * s[:, None, None], rtol=1e-6)
        np.testing.assert_array_equal(got[names.lora_a(module)], want[names.lora_a(module)])
        np.testing.assert_array_equal(got[names.router_weight(module)], want[names.router_weight(module)])
        active = want[names.ROUTER_MASK] > 0
        np.testing.assert_array_equal(got[names.router_bias(module)][active], want[names.router_bias(module)][active])
    np.testing.assert_array_equal(got[names.ROUTER_MASK], want[names.ROUTER_MASK])


def test_a_failed_kv_check_says_so():
    """Logits within tolerance but the int8 cache's rows too far from the reference's: the message names the cache,
    not the logits."""
    from hoe.core.errors import ParityError
    from hoe.export.validate import check_report

    report = {"passed": False, "max_abs_logits": 1e-3, "tolerance": 3e-3,
              "kv_cache": {"passed": False, "max_steps_apart": 2}}
    with pytest.raises(ParityError, match="int8 KV cache's rows are 2 rounding steps apart"):
        check_report(report)
    with pytest.raises(ParityError, match="max abs logits diff 0.004 > tolerance"):
        check_report({**report, "max_abs_logits": 4e-3, "kv_cache": {"passed": True}})
