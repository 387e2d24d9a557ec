"""Experts baked into a quantized graph (`hoe export --bake-experts`): parity against the reference holding the
dequantized experts, the graph's shape, the runtime, swap-experts (rebake) and refusals."""

import hashlib
import json

import numpy as np
import onnx
import pytest
from hoe.core.errors import ConfigError

CASES = [("llama", "int4", True, 32), ("qwen2", "int8", False, 16), ("mistral", "int4", False, 16)]
FLOAT_CASES = [("llama", "fp32", True, 32), ("qwen2", "fp32", True, 32)]  # qwen2: a base bias after the product


@pytest.fixture
def baked(quantized):
    """(arch, weights, symmetric, block) -> quantized(..., bake=True)."""
    return lambda *case: quantized(*case, bake=True)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_baked_graph_matches_the_dequantized_reference(baked, case):
    _, _, out, report = baked(*case)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    m = json.loads((out / "hoe_config.json").read_text())
    section = m["quantization"]["experts"]
    assert section["storage"] == "baked" and section["lora_B"] == 8
    assert section["lora_A"] == section["router_weight"] == {"int4": 4, "int8": 8}[case[1]]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    inputs = {i.name for i in graph.input}
    assert "router_mix" in inputs and not any(n.startswith(("experts.", "routers.")) for n in inputs)
    ops = [n.op_type for n in graph.node]
    # per layer 4 fused products (q/k/v, o, gate/up, down with their lora_A and routers) + 7 lora_B; lm_head
    assert ops.count("MatMulNBits") == 2 * (4 + 7) + 1
    fused = [n for n in graph.node if n.name.startswith("baked/") and n.op_type == "MatMulNBits" and len(n.input) == 6]
    assert len(fused) == 8 and all(n.input[5] for n in fused)  # the router bias rides on the fused product


@pytest.mark.parametrize("case", FLOAT_CASES, ids=["-".join(map(str, c)) for c in FLOAT_CASES])
def test_float_baked_graph_matches_the_reference(baked, case):
    """fp32 weights: experts and routers as fp32 initializers of one MatMul per group, lora_B products on fp32
    initializers; nothing is quantized, so the reference is the plain HoE model."""
    _, _, out, report = baked(*case)
    assert report["passed"] and report["argmax_agreement"] == 1.0, report["max_abs_logits"]
    assert report["quality"]["greedy_agreement"] == 1.0
    section = json.loads((out / "hoe_config.json").read_text())["quantization"]["experts"]
    assert section["lora_A"] == section["router_weight"] == section["lora_B"] == 32
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert not any(n.startswith(("experts.", "routers.")) for n in {i.name for i in graph.input})
    ops = [n.op_type for n in graph.node]
    assert "MatMulNBits" not in ops
    baked_ops = [n.op_type for n in graph.node if n.name.startswith("baked/")]
    assert baked_ops.count("MatMul") == 2 * (4 + 7)  # one product per site group, one per lora_B


def test_baked_parity_can_fail(baked, monkeypatch, revalidate):
    """A reference holding the float experts is not the baked graph: the check sees it."""
    import hoe.export.baked as baked_module

    base_dir, ckpt_dir, out, _ = baked(*CASES[0])
    monkeypatch.setattr(baked_module, "round_trip_experts", lambda tensors, *a, **k: dict(tensors))
    assert not revalidate(out, base_dir, ckpt_dir)["passed"]


def test_runtime_runs_a_baked_export(baked):
    """Nothing is bound, per-row preferences still route (a batch equals its rows run alone), switches apply."""
    import hoe.runtime as hr

    _, _, out, _ = baked(*CASES[0])
    model = hr.load(out, threads=1)
    assert model.backend.tensors == {}
    config = hr.GenerationConfig(max_new_tokens=6, ignore_eos=True)
    prompt = [5, 9, 17, 3]
    prefs = [[1.0, 0.0, 0.0], [0.0, 0.2, 0.8]]
    together = model.generate([prompt, prompt], preference=prefs, config=config)
    alone = [model.generate([prompt], preference=p, config=config)[0] for p in prefs]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    gen = model.generator(prefs[0], config)
    gen.append_tokens([prompt])
    first = gen.generate_next_token()
    gen.set_preference(prefs[1])
    assert gen.generate_next_token().shape == first.shape


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", [CASES[0], FLOAT_CASES[1]], ids=["int4", "fp32"])
def test_swap_experts_rebakes_the_graph(baked, tmp_path, revalidate, swap_random, case):
    from hoe.contract.manifest import swap_experts
    from hoe.core.loading import load_base
    from tiny_models import random_hoe_checkpoint

    base_dir, ckpt_dir, out, _ = baked(*case)
    data_before = _digest(out / "model.onnx.data")
    folder, other = swap_random(base_dir, ckpt_dir, out, seed=7)
    assert _digest(folder / "model.onnx.data") != data_before
    report = revalidate(folder, base_dir, other)
    assert report["passed"], report["max_abs_logits"]
    assert _digest(out / "model.onnx.data") != _digest(folder / "model.onnx.data")  # the source export untouched

    smaller = random_hoe_checkpoint(load_base(base_dir), n_experts=2, rank=3, seed=8)
    smaller.save(tmp_path / "smaller")
    with pytest.raises(ConfigError, match="re-export"):
        swap_experts(folder, tmp_path / "smaller")
    assert json.loads((folder / "hoe_config.json").read_text())["hoe"]["n_experts"] == 3  # nothing installed


def test_bake_refusals():
    from hoe.export.onnx_export import ExportConfig

    for bad in (dict(weights="fp16"), dict(weights="int4", target="tensorrt"), dict(weights="int4", experts=False),
                dict(weights="fp32", dtype="fp16")):
        with pytest.raises(ConfigError, match="bake-experts"):
            ExportConfig(bake_experts=True, **bad)
    assert np.isfinite(ExportConfig(bake_experts=True, weights="int8").block_size)
    assert ExportConfig(bake_experts=True).weights == "fp32"
