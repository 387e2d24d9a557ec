"""Weight quantization (`hoe export --weights`): the math, the graph, parity vs the dequantized reference,
the manifest, swap-experts on a quantized export, and refusals."""

import json

import numpy as np
import onnx
import pytest
from hoe.core.errors import ConfigError
from hoe.export.quantize import QuantConfig, quantize_blocks

# ---------------------------------------------------------------------------- the math vs numpy


def numpy_block_quant(w: np.ndarray, bits: int, block: int, symmetric: bool):
    """Independent re-implementation of MatMulNBits' RTN block quantization: levels [N,K], scales, zeros [N,kb]."""
    k, n = w.shape
    kb = -(-k // block)
    padded = np.zeros((kb * block, n), np.float32)
    padded[:k] = w
    blocks = padded.T.reshape(n, kb, block)
    qmax, mid = (1 << bits) - 1, 1 << (bits - 1)
    if symmetric:  # the signed extreme maps to -2^(bits-1)
        hi, lo = blocks.max(-1), blocks.min(-1)
        scale = np.where(np.abs(hi) > np.abs(lo), hi, lo) / -mid
        zero = np.full(scale.shape, mid)
    else:  # [min(0, lo), max(0, hi)] onto [0, qmax]
        lo, hi = np.minimum(blocks.min(-1), 0), np.maximum(blocks.max(-1), 0)
        scale = (hi - lo) / qmax
        zero = np.clip(np.round(-lo / np.where(scale == 0, 1, scale)), 0, qmax)
    inv = np.where(scale == 0, 0, 1 / np.where(scale == 0, 1, scale))
    q = np.clip(np.round(blocks * inv[..., None] + zero[..., None]), 0, qmax).reshape(n, -1)[:, :k]
    return q.astype(np.int32), scale.astype(np.float32), zero.astype(np.int32)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("block,k", [(16, 48), (32, 48), (32, 64)])
def test_block_quantization_matches_numpy(bits, symmetric, block, k):
    w = (np.random.default_rng(bits + k + block).standard_normal((k, 24)) * 0.1).astype(np.float32)
    q = quantize_blocks(w, bits, block, symmetric)
    levels, scales, zeros = numpy_block_quant(w, bits, block, symmetric)
    assert q.packed.shape == (24, -(-k // block), block * bits // 8)
    np.testing.assert_array_equal(q.levels()[:, :k], levels)
    np.testing.assert_allclose(q.scales, scales, rtol=1e-6)
    np.testing.assert_array_equal(q.zeros(), zeros)
    want = (levels - np.repeat(zeros, block, 1)[:, :k]) * np.repeat(scales, block, 1)[:, :k]  # [N, K]
    np.testing.assert_allclose(q.dequantize(), want.T, rtol=1e-6, atol=1e-9)
    step = np.repeat(np.abs(scales), block, 1)[:, :k].T  # one quantization step per weight
    assert np.all(np.abs(q.dequantize() - w) <= (1.0 if symmetric else 0.5) * step + 1e-7)
    assert (q.zero_points is None) == symmetric


def test_config_refusals():
    for bad in (dict(weights="int3"), dict(block_size=24), dict(block_size=8), dict(target="gpu"),
                dict(weights="int8", target="tensorrt"), dict(weights="int4", symmetric=False, target="tensorrt"),
                dict(accuracy_level=5)):
        with pytest.raises(ConfigError):
            QuantConfig(**bad)
    assert QuantConfig(weights="int4", target="tensorrt").form == "DequantizeLinear"
    assert QuantConfig(weights="int8").form == "MatMulNBits" and QuantConfig(weights="fp16").form == "Cast"


def test_cli_refuses_before_work(tmp_path, capsys):
    from hoe.cli.cli import main

    code = main(["export", "--base", str(tmp_path), "--hoe", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--weights", "int8", "--target", "tensorrt"])
    captured = capsys.readouterr()
    assert code == 2 and "int8" in captured.out + captured.err and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- exports of tiny models


from tiny_models import QUANT_FAST as FAST  # noqa: E402

CASES = [("llama", "int4", True, 32, "ort-cpu"), ("qwen2", "int8", False, 16, "ort-cpu"),
         ("mistral", "int4", False, 16, "ort-cpu"), ("llama", "int8", True, 16, "ort-cpu"),
         ("qwen2", "int4", True, 16, "tensorrt"), ("mistral", "fp16", True, 32, "ort-cpu")]


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_quantized_graph_matches_the_dequantized_reference(quantized, case):
    arch, weights, symmetric, block, target = case
    _, _, out, report = quantized(*case)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    q = report["quantization"]
    assert q["reference_linears"] == 15  # 2 layers x 7 + lm_head
    quality = report["quality"]
    assert quality["prompts"] == 2 and 0 <= quality["greedy_agreement"] <= 1 and quality["mean_kl"] >= 0
    if weights in ("int4", "int8") and target != "tensorrt":
        assert q["parity_graph"].startswith("MatMulNBits at accuracy_level 0")
        assert q["shipped"]["accuracy_level"] == 4 and np.isfinite(q["shipped"]["max_abs_logits"])


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_manifest_and_graph_record_the_precision(quantized, case):
    from hoe.export.trt_ops import check_model

    arch, weights, symmetric, block, target = case
    _, _, out, _ = quantized(*case)
    m = json.loads((out / "hoe_config.json").read_text())
    q = m["quantization"]
    assert m["model"]["weights"] == weights == q["weights"] and q["target"] == target
    assert q["linear"] == 15 and q["embedding"]["tied"] is False and q["table"] == weights
    products = 2 * 4 + 1  # per layer q/k/v packed, o, gate/up packed, down (projections.py); lm_head
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in graph.graph.node]
    consts = {i.name for i in graph.graph.initializer}
    float_weights = [n for n in graph.graph.node if n.op_type == "MatMul" and n.input[1] in consts]
    if weights == "fp16":
        assert q["form"] == "Cast" and not float_weights
        assert sum(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.graph.initializer) == products + 1
        return
    assert q["block_size"] == block and q["symmetric"] == symmetric
    assert not float_weights  # every base linear weight is quantized
    if target == "tensorrt":
        assert q["form"] == "DequantizeLinear" and m["model"]["opset"] == 21
        assert ops.count("DequantizeLinear") == products + 1
        assert check_model(out / "model.onnx").ready
    else:
        assert ops.count("MatMulNBits") == products and ops.count("GatherBlockQuantized") == 1
        nbits = [n for n in graph.graph.node if n.op_type == "MatMulNBits"]
        attrs = {a.name: a.i for a in nbits[0].attribute}
        assert attrs["bits"] == q["bits"] == {"int4": 4, "int8": 8}[weights]
        assert attrs["block_size"] == block and attrs["accuracy_level"] == 4
        assert all(len(n.input) == (3 if symmetric else 4) for n in nbits)


def test_parity_fails_without_the_dequantized_weights(quantized, monkeypatch):
    """The check can fail: a reference with the original fp32 weights is not the int4 graph."""
    import hoe.export.quantize as quantize
    from hoe.export.validate import ValidationConfig, validate_export

    base_dir, ckpt_dir, out, _ = quantized(*CASES[0])
    monkeypatch.setattr(quantize, "round_trip", lambda w, cfg, table=False: w)
    report = validate_export(out, base_dir, ckpt_dir, ValidationConfig(**{**FAST, "quality_prompts": 0}))
    assert not report["passed"] and report["max_abs_logits"] > 10 * report["tolerance"]


def test_swap_experts_on_a_quantized_export(quantized, tmp_path):
    import shutil

    from hoe.contract.manifest import swap_experts
    from hoe.core.loading import load_base
    from hoe.export.validate import ValidationConfig, validate_export
    from tiny_models import random_hoe_checkpoint

    base_dir, _, out, _ = quantized(*CASES[0])
    folder = tmp_path / "swapped"
    shutil.copytree(out, folder)
    ckpt = random_hoe_checkpoint(load_base(base_dir), n_experts=2, rank=3, seed=7)
    ckpt.save(tmp_path / "other")
    manifest = swap_experts(folder, tmp_path / "other")
    assert manifest["hoe"]["n_experts"] == 2 and manifest["quantization"]["weights"] == "int4"
    report = validate_export(folder, base_dir, tmp_path / "other", ValidationConfig(**{**FAST, "quality_prompts": 0}))
    assert report["passed"], report["max_abs_logits"]


@pytest.mark.parametrize("table", ["", "int8", "fp32"])
def test_tied_table_is_quantized_once_and_shared(tmp_path, table, tied_folders):
    """A tied lm_head: GatherBlockQuantized and the lm_head's MatMulNBits read the same packed initializer, at
    the table's own precision (--embedding-weights); an fp32 table stays a Gather + Gemm."""
    from hoe.export.onnx_export import ExportConfig, export
    from hoe.export.validate import ValidationConfig, validate_export

    base_dir, ckpt_dir = tied_folders(tmp_path, "llama")
    export(base_dir, ckpt_dir, tmp_path / "out", ExportConfig(threads=1, validate=False, weights="int4", table=table))
    q = json.loads((tmp_path / "out" / "hoe_config.json").read_text())["quantization"]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    if table == "fp32":
        assert q["lm_head"] is None and q["embedding"] is None and q["linear"] == 14
        assert len(nbits) == 2 * 4  # per layer: packed q/k/v, o, packed gate/up, down
        assert [n.op_type for n in graph.node].count("Gemm") == 1
    else:
        bits = {"": 4, "int8": 8}[table]
        assert q["lm_head"] == {"tied": True, "weights": table or "int4", "op": "MatMulNBits"}
        assert q["embedding"]["tied"] is True and q["linear"] == 15
        nodes = {n.output[0]: n for n in graph.node}
        gbq = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
        packed = nodes[gbq.input[0]].input[0]  # Reshape(packed) -> GatherBlockQuantized
        head = [n for n in nbits if n.input[1] == packed]
        assert len(head) == 1 and head[0].input[2] == gbq.input[2]  # same packed weights, same scales
        assert {a.name: a.i for a in head[0].attribute}["bits"] == bits == {a.name: a.i for a in gbq.attribute}["bits"]
    report = validate_export(tmp_path / "out", base_dir, ckpt_dir, ValidationConfig(**{**FAST, "quality_prompts": 0}))
    assert report["passed"], report["max_abs_logits"]


def test_bench_parity_reports_the_quantization_cost(quantized):
    """`hoe bench parity` on a quantized export: the reference holds the dequantized weights and the graph runs at
    accuracy_level 0 (fp32 activations), so it passes at the fp32 tolerance; the cost against fp32 (the shipped
    int8 activations included) is reported apart."""
    from hoe.bench.parity import TOLERANCES, ParityConfig, run_parity

    _, _, out, _ = quantized(*CASES[0])
    cfg = ParityConfig(batches=[1], new_tokens=[1, 3], past=[0, 4], greedy_tokens=4, greedy_prompts=[3, 5],
                       backends=["ort:cpu"])
    result = run_parity(out, cfg)
    assert result["passed"] and (result["tolerances"]["atol"], result["tolerances"]["rtol"]) == TOLERANCES["fp32"]
    assert result["parity_graph"].startswith("MatMulNBits at accuracy_level 0")
    cost = result["quantization_cost"]
    assert cost["weights"] == "int4" and cost["prompts"] == 8 and 0 <= cost["teacher_forced_top1"] <= 1
