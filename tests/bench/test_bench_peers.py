"""The benchmark's peers on the tiny model: onnxruntime-genai's build (ortgenai), torch.compile with a static
cache (torch-compile), the long-context case and per-precision floors."""

import numpy as np
import pytest
from hoe.bench import ortgenai
from hoe.bench.systems import BackendSystem, backend_config, greedy_run, load_backend

needs_og = pytest.mark.skipif(not ortgenai.available(),
                              reason="onnxruntime-genai is not installed (pip install 'hoe[bench]')")


@pytest.fixture(scope="module")
def peer_model(tmp_path_factory, monkeypatch_module):
    """Like bench_model, with head_dim 16: onnxruntime-genai's GroupQueryAttention needs a multiple of 16."""
    from types import SimpleNamespace

    import tiny_models
    from hoe.bench.base_export import export_base
    from runtime_export import exported_folder
    from runtime_helpers import write_char_tokenizer

    plain = tiny_models.tiny_config

    def wider(arch, vocab=97, **kwargs):
        cfg = plain(arch, vocab, **kwargs)
        cfg.hidden_size, cfg.intermediate_size, cfg.head_dim = 64, 96, 16
        return cfg

    monkeypatch_module.setattr(tiny_models, "tiny_config", wider)
    root = tmp_path_factory.mktemp("peer_tiny")
    base, ckpt = tiny_models.tiny_hoe("llama", root)
    base.save_pretrained(root / "base")
    write_char_tokenizer(root / "base")
    ckpt.save(root / "hoe")
    export = exported_folder(root / "base", root / "hoe", root / "out")
    return SimpleNamespace(base_dir=root / "base", ckpt_dir=root / "hoe", export=export,
                           base_export=export_base(root / "base", root / "base_out"))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_builder_command_follows_the_export_precision(tmp_path):
    fp32 = ortgenai.builder_args(tmp_path, tmp_path / "o", tmp_path / "c", None)
    assert fp32[fp32.index("-p") + 1] == "fp32" and fp32[-1] == "hf_token=false"
    q = {"weights": "int4", "block_size": 16, "symmetric": False, "accuracy_level": 0}
    int4 = ortgenai.builder_args(tmp_path, tmp_path / "o", tmp_path / "c", q)
    assert int4[int4.index("-p") + 1] == "int4" and int4[int4.index("-e") + 1] == "cpu"
    assert {"block_size=16", "accuracy_level=0", "is_symmetric=false"} <= set(int4)


@needs_og
def test_ortgenai_fp32_build_decodes_like_our_base_graph(peer_model, tmp_path):
    """Same base, two exporters: greedy tokens of onnxruntime-genai's fp32 build equal base-ort's."""
    folder = ortgenai.cached_build(peer_model.base_dir, None, cache=tmp_path)
    assert ortgenai.cached_build(peer_model.base_dir, None, cache=tmp_path) == folder  # cached
    peer = ortgenai.OrtGenaiSystem(folder, threads=1, max_length=64)
    ours = BackendSystem("base-ort", load_backend(peer_model.base_export, backend_config(1)), np.zeros(0))
    prompt = np.random.default_rng(3).integers(3, 97, size=(1, 9))
    a, b = greedy_run(peer, prompt, 12), greedy_run(ours, prompt, 12)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert len(a.step_ms) == 11 and a.ttft_ms > 0
    ours.close()


def test_torch_compile_decodes_like_eager(bench_model, reference):
    import torch
    import torch._dynamo.utils as dynamo_utils
    from hoe.bench.torch_compile import TorchCompileSystem
    from hoe.core.generate import generate
    from hoe.core.loading import load_hoe

    dynamo_utils.counters.clear()
    k = reference.config.n_routers
    mix = np.full(k, 1.0 / k, dtype=np.float32)
    own = load_hoe(bench_model.base_dir, bench_model.ckpt_dir)  # the system takes its model over
    system = TorchCompileSystem(own, mix, threads=1, max_length=32)
    prompt = np.random.default_rng(4).integers(3, 97, size=(1, 6))
    run = greedy_run(system, prompt, 4)
    again = greedy_run(system, prompt, 4)  # the cache is reset, the graphs are reused
    ids = torch.from_numpy(prompt)
    eager = generate(reference, ids, torch.ones_like(ids), torch.from_numpy(mix)[None], 4).numpy()
    np.testing.assert_array_equal(run.tokens, eager)
    np.testing.assert_array_equal(again.tokens, eager)
    assert set(system.compile_ms) == {"batch1_tokens6", "batch1_tokens1"}
    assert not dynamo_utils.counters["graph_break"]  # HoE's state is traced, not broken on
    assert system.compiles() == 2  # one graph per shape, shared by every decoder block (no per-layer recompile)


@needs_og
def test_latency_reports_the_peer_and_the_long_context(peer_model, tmp_path, monkeypatch):
    from hoe.bench.latency import LatencyConfig, Sources, run_latency

    monkeypatch.setenv("HOE_CACHE", str(tmp_path))  # the peer's build goes here, not into the user's cache
    cfg = LatencyConfig(batches=[1], prompt_lengths=[5], new_tokens=3, repeats=1, switch_repeats=5,
                        bandwidth_mb=8, systems=["hoe-ort", "base-ort", "ortgenai"], long_context=60,
                        long_new_tokens=3)
    result = run_latency(Sources(peer_model.export, peer_model.base_export, peer_model.base_dir, None), cfg)
    assert set(result["cases"]) == {"batch1_prompt5", "batch1_prompt60"}
    assert set(result["systems"]) == {"hoe-ort", "base-ort", "ortgenai"}
    ratios = result["ratios"]
    assert ratios["hoe_over_ortgenai"] > 0 and ratios["long_over_short"] > 0
    assert set(result["long_over_short_by_system"]) == {"hoe-ort", "base-ort", "ortgenai"}
    assert set(result["paired_long_over_short_by_system"]) == {"hoe-ort", "base-ort", "ortgenai"}
    assert result["paired_ratios"]["long_over_short"]["median"] > 0
    steady = result["steady_long_over_short_by_system"]
    assert set(steady) == {"hoe-ort", "base-ort", "ortgenai"} and result["ratios"]["long_over_short_steady"] > 0
    assert result["bytes_per_token"]["ortgenai"] > 0 and result["systems"]["ortgenai"]["floor_ms_per_token"] > 0
    assert result["targets"]["hoe_over_ortgenai"]["target"] == "<= 1.1"  # fp32 export


def test_int4_graph_reads_about_an_eighth_of_the_fp32_bytes(tmp_path):
    """Floors per precision: an int4 graph's weight bytes (packed values + scales), tied table counted once."""
    import onnx
    from hoe.bench.floor import graph_weight_bytes
    from hoe.export.quantize import quantize_blocks
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((256, 512)).astype(np.float32)
    q = quantize_blocks(w, 4, 32, True)
    inits = [numpy_helper.from_array(q.packed, "B"), numpy_helper.from_array(q.scales, "S"),
             numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array([512, -1]), "shape")]
    nodes = [helper.make_node("MatMulNBits", ["x", "B", "S"], ["y"], domain="com.microsoft", K=256, N=512,
                              bits=4, block_size=32),
             helper.make_node("Reshape", ["B", "shape"], ["table"]),
             helper.make_node("GatherBlockQuantized", ["table", "ids", "S"], ["e"], domain="com.microsoft"),
             helper.make_node("MatMul", ["x", "W"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 256]),
                                           helper.make_tensor_value_info("ids", 7, [1])],
                              [helper.make_tensor_value_info("y", 1, [1, 512])], inits)
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    int4 = 256 * 512 // 2 + q.scales.nbytes
    assert graph_weight_bytes(tmp_path / "m.onnx") == int4 + w.nbytes + 16
    assert int4 < w.nbytes / 6
