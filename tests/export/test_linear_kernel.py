"""hoe's int4 linear kernel in an export (`hoe export --weights int4 --linear-kernel`, export/linear_kernel.py): the
layout round-trips, the graph with every eligible MatMulNBits as MatMulInt4 matches the reference holding the
dequantized weights (plain, baked with the Mixture kernel, block offsets; llama, qwen2, mistral), the check can
fail, swap-experts rewrites the tiles, the base graph of the benchmarks gets the same products, and refusals."""

import json

import numpy as np
import onnx
import pytest
from hoe.core.errors import CheckpointError, ConfigError
from hoe.runtime import kernels
from tiny_models import QUANT_FAST

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")

# (arch, block, bake, mixture kernel, offsets)
CASES = [("llama", 32, False, False, False), ("qwen2", 64, True, True, False), ("mistral", 32, True, False, True)]


@pytest.fixture
def with_linear(quantized):
    return lambda arch, block, bake, mixture, offsets: quantized(arch, "int4", True, block, bake=bake,
                                                                 offsets=offsets, kernel=mixture, linear=True)


@pytest.mark.parametrize("shape", [(70, 100, 32), (576, 1536, 64), (300, 130, 128), (48, 97, 32)])
def test_unpack_inverts_pack(shape):
    from hoe.export.linear_kernel import pack, unpack
    from hoe.export.quantize import quantize_blocks

    k, n, block = shape
    q = quantize_blocks(np.random.default_rng(k).normal(size=(k, n)).astype(np.float32), 4, block, True)
    tiles = pack(q)
    back = unpack(tiles, k, n, block)
    np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    np.testing.assert_array_equal(back.levels()[:, :k], q.levels()[:, :k])
    np.testing.assert_array_equal(pack(back), tiles)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_linear_kernel_graph_matches_the_dequantized_reference(with_linear, case):
    _, _, out, report = with_linear(*case)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    quant = json.loads((out / "hoe_config.json").read_text())["quantization"]
    section = quant["linear_kernel"]
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ops = [(n.domain, n.op_type) for n in graph.node]
    int4 = [n for n in graph.node if n.op_type == "MatMulNBits" and any(a.name == "bits" and a.i == 4
                                                                         for a in n.attribute)]
    assert not int4  # every int4 product converted
    fused = ops.count(("hoe.ort", kernels.FUSED_OP))  # a baked product and its Mixture as one node
    unfused = ops.count(("hoe.ort", "Mixture"))  # qwen2's q/k/v: Y adds the base's bias to F, so Y is not F
    assert fused == section["mixtures"] and fused + unfused == (2 * 4 if case[3] else 0)
    assert unfused == (2 if case[0] == "qwen2" and case[3] else 0)
    products = ops.count(("hoe.ort", "MatMulInt4")) + fused
    # per layer q/k/v, o, gate/up, down (each one product, fused with its experts when baked), and the lm_head
    assert products == section["products"] == 2 * 4 + 1 and section["kernel"] == kernels.LINEAR_KERNEL
    assert section["lm_head"]  # the tiny models' lm_head is untied: an ordinary linear (quantization.lm_head null)
    assert quant["lm_head"] is None or quant["lm_head"]["op"] == kernels.LINEAR_KERNEL
    lora_b = ops.count(("com.microsoft", "MatMulNBits"))  # int8 lora_B products, where no Mixture kernel takes them
    assert section["kept"] == lora_b == (2 * 7 if case[2] and not case[3] else 0)
    gathered = (quant["embedding"] or {}).get("op") == "GatherBlockQuantized"  # D = 32: not at block 64
    assert (("com.microsoft", "GatherBlockQuantized") in ops) == gathered  # the table keeps its own layout
    biased = [n for n in graph.node if n.op_type == "MatMulInt4" and len(n.input) > 2 and n.input[2]
              or n.op_type == kernels.FUSED_OP]
    assert len(biased) == (2 * 4 if case[2] else 0)  # the baked products' router bias
    # baked, each norm before q/k/v and gate/up is its product's prologue (the final one feeds a Slice first: the
    # forward's logits_to_keep); unbaked, the experts' lora_A products read the normed x too, the norm stays a node
    norms = 2 * 2 if case[2] else 0
    assert section["norms"] == norms and sum("LayerNormalization" in op for _, op in ops) == 5 - norms
    prologues = [n for n in graph.node if n.domain == "hoe.ort" and any(a.name == "epsilon" for a in n.attribute)]
    assert len(prologues) == norms and all(n.input[-1].endswith("weight") for n in prologues)
    # the SiLU gate folds into a fused gate/up group (its 2 modules: gate, up); elsewhere the experts' deltas are
    # added to the halves first
    gates = 2 if case[3] else 0
    epilogues = [n for n in graph.node if n.domain == "hoe.ort" and any(a.name == "swiglu" for a in n.attribute)]
    assert section["swiglu"] == len(epilogues) == gates and ops.count(("", "Sigmoid")) == 2 - gates


def test_linear_kernel_parity_can_fail(with_linear, revalidate, tmp_path):
    """One scale in one product's tiles 1% off: the check sees it (the graph's numbers are the kernel's)."""
    import shutil

    import onnx_ir as ir
    from hoe.contract.manifest import DATA_FILE, MODEL_FILE

    base_dir, ckpt_dir, out, _ = with_linear(*CASES[0])
    folder = tmp_path / "off"
    shutil.copytree(out, folder)
    model = ir.load(out / MODEL_FILE)  # its data read from `out`, the copy's rewritten
    tiles = next(v for name, v in model.graph.initializers.items() if name.endswith(".tiles") and "mlp" in name)
    data = tiles.const_value.numpy().copy()
    scales = data[:, :, 1024:].copy().view(np.float32)
    scales *= 1.01
    data[:, :, 1024:] = scales.view(np.uint8)
    tiles.const_value = ir.tensor(data, name=tiles.name)
    (folder / MODEL_FILE).unlink()
    (folder / DATA_FILE).unlink()
    ir.save(model, folder / MODEL_FILE, external_data=DATA_FILE)
    assert not revalidate(folder, base_dir, ckpt_dir)["passed"]


@pytest.mark.parametrize("case", CASES[1:], ids=["mixture", "offsets"])
def test_swap_experts_rewrites_the_tiles(with_linear, revalidate, swap_random, case):
    base_dir, ckpt_dir, out, _ = with_linear(*case)
    folder, other = swap_random(base_dir, ckpt_dir, out, seed=5)
    report = revalidate(folder, base_dir, other)
    assert report["passed"], report["max_abs_logits"]


def test_base_graph_gets_the_same_products(with_linear):
    from hoe.bench.base_export import export_options

    out = with_linear(*CASES[0])[2]
    options = export_options(json.loads((out / "hoe_config.json").read_text()))
    assert options["linear_kernel"] and options["weights"] == "int4"
    from hoe.export.onnx_export import ExportConfig

    assert ExportConfig(**options).linear_kernel


def _gated_mlp(k, n, outputs=("h",)):
    """MatMulNBits (int4, block 32) -> Split in two -> Mul(Mul(gate, Sigmoid(gate)), up) -> h, as the base graph
    has it (ModelProto); extra outputs: the gate too."""
    from hoe.export.quantize import quantize_blocks
    from onnx import TensorProto, helper, numpy_helper

    q = quantize_blocks(np.random.default_rng(n).normal(scale=0.1, size=(k, n)).astype(np.float32), 4, 32, True)
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "scales"], ["y"], domain="com.microsoft", K=k, N=n, bits=4,
                              block_size=32, accuracy_level=0),
             helper.make_node("Split", ["y", "sizes"], ["gate", "up"], axis=-1),
             helper.make_node("Sigmoid", ["gate"], ["s"]), helper.make_node("Mul", ["gate", "s"], ["silu"]),
             helper.make_node("Mul", ["up", "silu"], ["h"])]
    inits = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales, "scales"),
             numpy_helper.from_array(np.array([n // 2, n // 2], np.int64), "sizes")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def _run(model, x):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_split_gate_up_product_gets_the_swiglu_epilogue():
    """The base graph's MLP (one MatMulInt4 of [gate | up], Split, Sigmoid, Mul, Mul) becomes one MatMulInt4 with
    swiglu = 1, and computes what onnxruntime's nodes computed on the MatMulNBits weight."""
    import onnx_ir as ir
    from hoe.export.linear_kernel import use_kernel

    proto = _gated_mlp(96, 144)
    model = ir.from_proto(proto)
    section = use_kernel(model)
    folded = ir.to_proto(model)
    assert section["swiglu"] == 1 and [n.op_type for n in folded.graph.node] == ["MatMulInt4"]
    x = np.random.default_rng(0).normal(size=(2, 3, 96)).astype(np.float32)
    (want,), (got,) = _run(proto, x), _run(folded, x)
    assert got.shape == (2, 3, 72)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_swiglu_epilogue_leaves_a_gate_read_elsewhere():
    import onnx_ir as ir
    from hoe.export.linear_kernel import use_kernel

    model = ir.from_proto(_gated_mlp(96, 144, outputs=("h", "gate")))
    assert use_kernel(model)["swiglu"] == 0 and "Sigmoid" in [n.op_type for n in model.graph]


def test_linear_kernel_refusals(with_linear, monkeypatch):
    import hoe.runtime as hr
    from hoe.export.onnx_export import ExportConfig

    for bad in (dict(), dict(weights="int8"), dict(weights="int4", symmetric=False),
                dict(weights="int4", block_size=16), dict(weights="int4", dtype="fp16"),
                dict(weights="int4", target="ort-cuda")):
        with pytest.raises(ConfigError, match="linear-kernel"):
            ExportConfig(linear_kernel=True, **bad)
    out = with_linear(*CASES[0])[2]
    monkeypatch.setattr(kernels, "library", lambda: None)
    with pytest.raises(CheckpointError, match="--linear-kernel"):
        hr.load(out, threads=1)
    with pytest.raises(ConfigError, match="no kernels library"):
        ExportConfig(linear_kernel=True, weights="int4")


@pytest.mark.parametrize("bake", [False, True])
def test_tied_table_is_read_from_the_lm_heads_tiles(tmp_path, tied_folders, bake):
    """A tied int4 table: the lookup becomes GatherInt4 on the lm_head's tiles, so the file holds the table once
    (no MatMulNBits bytes of it left), and the graph still matches the dequantized reference."""
    from hoe.export.onnx_export import ExportConfig, export
    from hoe.export.validate import ValidationConfig, validate_export

    base_dir, ckpt_dir = tied_folders(tmp_path, "llama")
    out = tmp_path / "out"
    export(base_dir, ckpt_dir, out, ExportConfig(threads=1, validate=False, weights="int4", symmetric=True,
                                                 block_size=32, bake_experts=bake, mixture_kernel=bake,
                                                 linear_kernel=True))
    quant = json.loads((out / "hoe_config.json").read_text())["quantization"]
    assert quant["embedding"]["op"] == "hoe.ort.GatherInt4" and quant["embedding"]["tied"] is True
    assert quant["lm_head"]["op"] == kernels.LINEAR_KERNEL and quant["linear_kernel"]["embedding"] is True
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "GatherBlockQuantized" not in ops and ops.count("GatherInt4") == 1
    gather = next(n for n in graph.node if n.op_type == "GatherInt4")
    head = [n for n in graph.node if n.op_type == "MatMulInt4" and n.input[1] == gather.input[0]]
    assert len(head) == 1  # one initializer for the lookup and the logits
    names = {i.name for i in graph.initializer}
    table_rows = [i.name for i in graph.initializer if i.dims and i.dims[0] == 97]  # [V, ...]: MatMulNBits' B
    assert gather.input[0].removesuffix(".tiles") not in names and not table_rows  # the table's old bytes gone
    report = validate_export(out, base_dir, ckpt_dir, ValidationConfig(**QUANT_FAST))
    assert report["passed"], report["max_abs_logits"]
