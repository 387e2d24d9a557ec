"""hoe's Mixture kernel (`hoe export --bake-experts --mixture-kernel`, runtime/csrc): the baked graph with each
group's gating and lora_B products in one node matches the reference holding the dequantized experts, runs in
the runtime as the node-by-node baked graph does, swaps experts, and is refused where it cannot work."""

import json

import numpy as np
import onnx
import pytest
from hoe.core.errors import CheckpointError, ConfigError
from hoe.runtime import kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")

# (arch, weights, symmetric, block, offsets): an asymmetric grid (zero points), int8 and block offsets included
CASES = [("llama", "int4", True, 32, False), ("qwen2", "int8", False, 16, False), ("mistral", "int4", True, 16, True),
         ("qwen2", "int8", True, 32, True), ("llama", "fp32", True, 32, False), ("qwen2", "fp32", False, 16, False)]


@pytest.fixture
def with_kernel(quantized):
    return lambda arch, weights, symmetric, block, offsets: quantized(arch, weights, symmetric, block, bake=True,
                                                                      offsets=offsets, kernel=True)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_kernel_graph_matches_the_dequantized_reference(with_kernel, case):
    _, _, out, report = with_kernel(*case)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    assert json.loads((out / "hoe_config.json").read_text())["quantization"]["experts"]["kernel"] == "hoe.ort.Mixture"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ops = [(n.domain, n.op_type) for n in graph.node]
    assert ops.count(("hoe.ort", "Mixture")) == 2 * 4  # one per site group: q/k/v, o, gate/up, down per layer
    fp32 = case[1] == "fp32"  # fused fp32 MatMuls, an fp32 lm_head; lora_B on the int8 grid all the same
    assert ops.count(("com.microsoft", "MatMulNBits")) == (0 if fp32 else 2 * 4 + 1)  # the fused products, lm_head
    assert json.loads((out / "hoe_config.json").read_text())["quantization"]["experts"]["lora_B"] == 8
    assert ("", "Softmax") not in ops  # no gating chain left
    mixtures = [n for n in graph.node if n.op_type == "Mixture"]
    folded = [n for n in mixtures if len(n.input) == 7]  # block offsets added inside the kernel (not after a bias)
    assert len(folded) >= (2 * 3 if case[4] else 0) and (case[4] or not folded)


@pytest.mark.parametrize("case", [CASES[0], CASES[4]], ids=["int4", "fp32"])
def test_kernel_parity_can_fail(with_kernel, monkeypatch, revalidate, case):
    """The kernel's graph against a reference holding the float experts: the check sees the difference (at fp32,
    that of lora_B's int8 grid alone)."""
    import hoe.export.baked as baked_module

    base_dir, ckpt_dir, out, _ = with_kernel(*case)
    monkeypatch.setattr(baked_module, "round_trip_experts", lambda tensors, *a, **k: dict(tensors))
    assert not revalidate(out, base_dir, ckpt_dir)["passed"]


def test_runtime_routes_each_row_through_the_kernel(with_kernel):
    """router_mix is read per batch row inside the kernel: a left-padded batch with one preference per row equals
    its rows run alone; a mid-generation switch applies."""
    import hoe.runtime as hr

    model = hr.load(with_kernel(*CASES[0])[2], threads=1)
    assert model.backend.tensors == {}
    config = hr.GenerationConfig(max_new_tokens=8, ignore_eos=True)
    prompts, prefs = [[5, 9, 17, 3], [2, 4]], [[1.0, 0.0, 0.0], [0.0, 0.2, 0.8]]
    together = model.generate(prompts, preference=prefs, config=config)
    alone = [model.generate([p], preference=w, config=config)[0] for p, w in zip(prompts, prefs)]
    assert [r.token_ids for r in together] == [r.token_ids for r in alone]
    gen = model.generator(prefs[0], config)
    gen.append_tokens([prompts[0]])
    first = gen.generate_next_token()
    gen.set_preference(prefs[1])
    assert gen.generate_next_token().shape == first.shape


@pytest.mark.parametrize("case", [CASES[1], CASES[5]], ids=["int8", "fp32"])
def test_swap_experts_rebakes_the_kernel_graph(with_kernel, revalidate, swap_random, case):
    base_dir, ckpt_dir, out, _ = with_kernel(*case)
    folder, other = swap_random(base_dir, ckpt_dir, out, seed=11)
    report = revalidate(folder, base_dir, other)
    assert report["passed"], report["max_abs_logits"]


def test_kernel_refusals(with_kernel, monkeypatch):
    import hoe.runtime as hr
    from hoe.export.onnx_export import ExportConfig

    for bad in (dict(weights="int4"), dict(weights="int4", bake_experts=True, dtype="fp16"),
                dict(bake_experts=True, target="ort-cuda")):
        with pytest.raises(ConfigError, match="mixture-kernel"):
            ExportConfig(mixture_kernel=True, **bad)
    out = with_kernel(*CASES[0])[2]
    monkeypatch.setattr(kernels, "library", lambda: None)
    with pytest.raises(CheckpointError, match="without it"):
        hr.load(out, threads=1)
    with pytest.raises(ConfigError, match="no kernels library"):
        ExportConfig(mixture_kernel=True, weights="int4", bake_experts=True)
    assert np.isfinite(ExportConfig(weights="int4", bake_experts=True).block_size)
