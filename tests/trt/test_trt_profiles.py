"""Pure planning functions: profiles from the manifest, buffer sizes, engine manifest checks."""

from __future__ import annotations

import pytest
import toy_export as te
from hoe.contract import engine as tp
from hoe.core.errors import CheckpointError, ConfigError, InputError, ShapeMismatchError


def smollm2_manifest() -> dict:
    """The FORMAT.md example's shapes at SmolLM2 size (30 layers, 3 KV heads of 64, vocab 49152)."""
    m = te.manifest()
    m["architecture"].update(num_layers=30, num_kv_heads=3, head_dim=64, vocab_size=49152,
                             max_position_embeddings=8192)
    inputs = {k: v for k, v in m["inputs"].items() if not k.startswith("past_key_values")}
    for i in range(30):
        for w in ("key", "value"):
            inputs[f"past_key_values.{i}.{w}"] = {"dtype": "float32", "shape": ["batch", 3, "past_sequence", 64]}
    m["inputs"] = inputs
    m["outputs"] = {"logits": {"dtype": "float32", "shape": ["batch", "sequence", 49152]},
                    **{f"present.{i}.{w}": {"dtype": "float32", "shape": ["batch", 3, "total_sequence", 64]}
                       for i in range(30) for w in ("key", "value")}}
    m["hoe"].update(n_experts=3, rank=16, n_routers=4)
    return m


def test_profiles_cover_prefill_and_decode():
    limits = tp.EngineLimits(max_batch=4, max_context=1024, max_prefill=256, max_experts=5, max_rank=32, opt_batch=2)
    profs = tp.profiles(smollm2_manifest(), limits)
    pre, dec = profs["prefill"], profs["decode"]
    assert pre["input_ids"] == {"min": [1, 1], "opt": [2, 128], "max": [4, 256]}
    assert dec["input_ids"] == {"min": [1, 1], "opt": [2, 1], "max": [4, 1]}
    assert pre["past_key_values.7.key"] == {"min": [1, 3, 0, 64], "opt": [2, 3, 0, 64], "max": [4, 3, 1023, 64]}
    assert dec["past_key_values.7.key"]["opt"] == [2, 3, 511, 64]
    assert dec["attention_mask"] == {"min": [1, 1], "opt": [2, 512], "max": [4, 1024]}
    name = f"experts.{te.MODULE}.lora_A"
    assert dec[name] == {"min": [1, 1, te.HEAD_DIM], "opt": [3, 16, te.HEAD_DIM], "max": [5, 32, te.HEAD_DIM]}
    assert dec["routers.mask"] == {"min": [1, 1], "opt": [4, 3], "max": [4, 5]}  # K as exported, E up to 5
    for prof in profs.values():
        for shapes in prof.values():
            assert all(a <= b <= c for a, b, c in zip(shapes["min"], shapes["opt"], shapes["max"]))


def test_static_inputs_get_no_profile_entry():
    m = te.manifest()
    m["inputs"]["routers.mask"]["shape"] = [te.N_ROUTERS, te.N_EXPERTS]
    profs = tp.profiles(m, tp.EngineLimits(max_context=32, max_prefill=8))
    assert "routers.mask" not in profs["decode"] and "input_ids" in profs["decode"]


@pytest.mark.parametrize("limits, match", [
    (dict(max_context=128, max_prefill=8), "max_position_embeddings 64"),
    (dict(max_context=32, max_prefill=8, max_experts=2), "smaller than the exported experts"),
])
def test_bad_limits(limits, match):
    with pytest.raises(ConfigError, match=match):
        tp.profiles(te.manifest(), tp.EngineLimits(**limits))


@pytest.mark.parametrize("fields, match", [
    (dict(max_batch=0), "max_batch"), (dict(max_context=8, max_prefill=16), "max_prefill"),
    (dict(max_rank=-1), "max_rank"), (dict(max_batch=2, opt_batch=3), "opt_batch"),
])
def test_limits_are_validated(fields, match):
    with pytest.raises(ConfigError, match=match):
        tp.EngineLimits(**fields)


def test_fixed_dimension_cannot_grow():
    m = te.manifest()
    for spec in m["inputs"].values():
        spec["shape"] = [te.RANK if d == "rank" else d for d in spec["shape"]]
    with pytest.raises(ConfigError, match="fixed rank dimension"):
        tp.profiles(m, tp.EngineLimits(max_context=32, max_prefill=8, max_rank=8))


def test_unknown_symbol_is_named():
    m = te.manifest()
    m["inputs"]["input_ids"]["shape"] = ["batch", "s0"]
    with pytest.raises(ConfigError, match="'s0'"):
        tp.profiles(m, tp.EngineLimits(max_context=32, max_prefill=8))


def test_ort_profile_is_union_tuned_for_decode():
    profs = tp.profiles(te.manifest(), tp.EngineLimits(max_batch=2, max_context=32, max_prefill=8))
    merged = tp.ort_profile_shapes(profs)
    assert merged["min"]["input_ids"] == [1, 1] and merged["max"]["input_ids"] == [2, 8]
    assert merged["opt"]["input_ids"] == [1, 1]


def test_buffer_plan_and_memory_estimate_smollm2():
    limits = tp.EngineLimits(max_batch=1, max_context=2048, max_prefill=256)
    plan = tp.buffer_plan(smollm2_manifest(), limits)
    assert plan["present.0.key"]["shape"] == [1, 3, 2048, 64]
    assert plan["logits"]["bytes"] == 256 * 49152 * 4
    mem = tp.memory_estimate_mb(smollm2_manifest(), limits)
    # 30 layers x (K, V) x 2 ping-pong sets x 3 x 2047 x 64 x 4 bytes
    assert mem["kv_cache"] == pytest.approx(30 * 2 * 2 * 3 * 2047 * 64 * 4 / 2**20, abs=0.1)
    assert mem["logits"] == 48.0


def test_check_step_names_the_limits():
    profs = tp.profiles(te.manifest(), tp.EngineLimits(max_batch=2, max_context=32, max_prefill=8))
    tp.check_step(profs["decode"], "input_ids", (2, 1), "decode")
    with pytest.raises(InputError, match=r"\[1, 1\] .. \[2, 1\]"):
        tp.check_step(profs["decode"], "input_ids", (2, 3), "decode")
    assert tp.concrete_shape(["batch", 3, "past_sequence"], {"batch": 2, "past_sequence": 5}) == (2, 3, 5)
    with pytest.raises(ConfigError, match="'rank'"):
        tp.concrete_shape(["rank"], {})


def _engine(**over):
    m = te.manifest(sha={"model.onnx": "a" * 64})
    limits = tp.EngineLimits(max_context=32, max_prefill=8, max_experts=4)
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    info = tp.engine_manifest(m, limits, tp.profiles(m, limits), "10.3.0.30", gpu, "fp32", True, 1024, 12.3,
                              "2026-11-27T00:00:00", "f" * 64)
    info.update(over)
    return info


def test_engine_manifest_roundtrip(tmp_path):
    info = _engine()
    tp.save_engine_manifest(tmp_path, info)
    assert tp.load_engine_manifest(tmp_path) == info
    assert info["source_sha256"] == {"model.onnx": "a" * 64}
    with pytest.raises(CheckpointError, match="hoe build-engine"):
        tp.load_engine_manifest(tmp_path / "nothing")
    (tmp_path / tp.ENGINE_MANIFEST).write_text('{"format_version": 1}')
    with pytest.raises(ConfigError, match="lacks"):
        tp.load_engine_manifest(tmp_path)


def test_compat_checks():
    info = _engine()
    assert tp.check_engine_compat(info, "10.3.0.26", {"name": "Orin", "compute_capability": "8.7"}) == []
    with pytest.raises(CheckpointError, match="TensorRT 10.4.0"):
        tp.check_engine_compat(info, "10.4.0.1", {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(CheckpointError, match=r"compute capability 8.7\), but this GPU is H100"):
        tp.check_engine_compat(info, "10.3.0", {"name": "H100", "compute_capability": "9.0"})
    assert len(tp.check_engine_compat(info, "10.3.0", {"name": "Orin NX", "compute_capability": "8.7"})) == 1
    tp.check_source(info, {"sha256": {"model.onnx": "a" * 64}})
    with pytest.raises(CheckpointError, match="another model.onnx"):
        tp.check_source(info, {"sha256": {"model.onnx": "b" * 64}})


def test_tensor_fit():
    info = _engine()
    tp.check_tensor_fits(info, {"experts": 4, "rank": te.RANK, "routers": te.N_ROUTERS})
    with pytest.raises(ShapeMismatchError, match="--max-rank 3"):
        tp.check_tensor_fits(info, {"experts": 3, "rank": 3, "routers": te.N_ROUTERS})
