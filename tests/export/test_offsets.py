"""Block offsets (`hoe export --weights int4|int8 --block-offsets`): the min-max grid with a float offset per block
(GGUF's Q4_1), exact on weights already on such a grid; the graph's correction product; parity against the
dequantized reference (plain and baked), a check that can fail, rebake, and refusals."""

import json

import numpy as np
import onnx
import pytest
from hoe.core.errors import ConfigError
from hoe.export.quantize import OFFSETS_SUFFIX, QuantConfig, quantize_blocks


def q4_1_weight(k: int, n: int, seed: int, block: int = 32) -> np.ndarray:
    """W [K, N] on GGUF's Q4_1 grid: per block of `block` inputs w = d·q + m, q ∈ 0..15 using both ends."""
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 16, (n, k // block, block))
    q[..., 0], q[..., 1] = 0, 15  # llama.cpp's quantizer maps the block's min and max to 0 and 15
    d = rng.uniform(1e-3, 2e-2, (n, k // block, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.15, 0.05, (n, k // block, 1)).astype(np.float16).astype(np.float32)
    return np.ascontiguousarray((d * q + m).reshape(n, k).T, dtype=np.float32)


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_grid_error_is_half_a_step(bits):
    w = (np.random.default_rng(bits).standard_normal((80, 12)) * 0.1).astype(np.float32)  # K padded to 96
    q = quantize_blocks(w, bits, 32, True, offsets=True)
    assert q.offsets.shape == q.scales.shape == (12, 3) and q.zero_points is None
    step = np.repeat(q.scales, 32, 1)[:, :80].T
    assert np.all(np.abs(q.dequantize() - w) <= 0.5 * step + 1e-7)


def test_gguf_grids_come_back_exactly():
    """Q4_1 weights through the min-max grid and a Q8_0 table through the table's int8 absmax/127 are unchanged."""
    w = q4_1_weight(96, 40, seed=1)
    np.testing.assert_allclose(quantize_blocks(w, 4, 32, True, offsets=True).dequantize(), w, rtol=0, atol=1e-7)
    assert np.abs(quantize_blocks(w, 4, 32, True).dequantize() - w).max() > 1e-3  # absmax int4 is not exact
    rng = np.random.default_rng(2)
    d = rng.uniform(1e-3, 1e-2, (3, 40)).astype(np.float16).astype(np.float32)
    levels = rng.integers(-127, 128, (96, 40))
    levels[::32] = 127  # each block reaches |q| = 127, as Q8_0's absmax scale makes it
    table = np.repeat(d, 32, 0) * levels  # [K, N]
    np.testing.assert_allclose(quantize_blocks(table, 8, 32, True, table=True).dequantize(), table, rtol=0,
                               atol=1e-9)
    assert np.abs(quantize_blocks(table, 8, 32, True).dequantize() - table).max() > 1e-5  # onnxruntime's grid


def test_block_sums_are_block_indicators():
    q = quantize_blocks(np.ones((80, 4), np.float32), 4, 32, True, offsets=True)
    s = q.block_sums().dequantize()  # [K, k_blocks]
    want = np.zeros((80, 3))
    for j in range(3):
        want[32 * j: 32 * (j + 1), j] = 1
    np.testing.assert_array_equal(s, want)


def test_offset_refusals():
    for bad in (dict(weights="fp16"), dict(weights="fp32"), dict(weights="int4", target="tensorrt"),
                dict(weights="int4", symmetric=False)):
        with pytest.raises(ConfigError, match="offsets"):
            QuantConfig(offsets=True, **bad)
    assert QuantConfig(weights="int4", offsets=True).table_config().offsets is False  # the table keeps absmax


def test_cli_refuses_offsets_with_asymmetric(tmp_path, capsys):
    from hoe.cli.cli import main

    code = main(["export", "--base", str(tmp_path), "--hoe", str(tmp_path), "--out", str(tmp_path / "o"),
                 "--weights", "int4", "--block-offsets", "--asymmetric"])
    captured = capsys.readouterr()
    assert code == 2 and "offsets" in captured.out + captured.err and not (tmp_path / "o").exists()


CASES = [("llama", "int4", 32, False), ("qwen2", "int8", 16, True), ("mistral", "int4", 16, True)]


def _export(quantized, arch, weights, block, bake):
    return quantized(arch, weights, True, block, bake=bake, offsets=True)


@pytest.mark.parametrize("case", CASES, ids=["-".join(map(str, c)) for c in CASES])
def test_offset_graph_matches_the_dequantized_reference(quantized, case):
    arch, weights, block, bake = case
    _, _, out, report = _export(quantized, *case)
    assert report["passed"], report["max_abs_logits"]
    assert report["max_abs_logits"] <= report["tolerance"] and report["argmax_agreement"] == 1.0
    q = json.loads((out / "hoe_config.json").read_text())["quantization"]
    assert q["offsets"] is True and q["table"] == weights and q["embedding"]["op"] == "GatherBlockQuantized"
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    consts = {i.name: i for i in graph.initializer}
    offsets = [n for n in graph.node if n.op_type == "MatMul" and n.input[1].endswith(OFFSETS_SUFFIX)]
    assert len(offsets) == 2 * 4 + 1  # per layer q/k/v, o, gate/up, down; the (untied) lm_head
    assert all(n.input[1] in consts for n in offsets)
    float_weights = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in consts
                     and not n.input[1].endswith(OFFSETS_SUFFIX)]
    assert not float_weights


def test_offset_parity_can_fail(quantized, monkeypatch, revalidate):
    """A reference on the absmax grid (the offsets dropped) is not the graph: the check sees it."""
    import hoe.export.quantize as quantize

    base_dir, ckpt_dir, out, _ = _export(quantized, *CASES[0])
    original = quantize.round_trip
    monkeypatch.setattr(quantize, "round_trip", lambda w, cfg, table=False: original(w, QuantConfig(
        **{**cfg.to_dict(), "offsets": False}), table))
    assert not revalidate(out, base_dir, ckpt_dir)["passed"]


def test_swap_experts_rebakes_an_offset_graph(quantized, revalidate, swap_random):
    base_dir, ckpt_dir, out, _ = _export(quantized, *CASES[2])
    folder, other = swap_random(base_dir, ckpt_dir, out, seed=9)
    report = revalidate(folder, base_dir, other)
    assert report["passed"], report["max_abs_logits"]
