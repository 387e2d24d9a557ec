"""The Attention op of hoe's kernels library on its own, against numpy: decode steps and prompts (both code
paths), grouped and plain multi-head attention, left padding in the bias, past and present one buffer or two;
and its errors."""

import numpy as np
import pytest
from hoe.runtime import kernels

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")

NAMES = ["q", "k", "v", "past_key", "past_value", "bias"]


def _op_session(op, names, heads, kv_heads, scale, library=None, threads=1):
    """One `op` node (Attention or AttentionInt8: int8 past/present) over `names`; position_ids, if named, int64."""
    from onnx import TensorProto, helper

    cache = TensorProto.INT8 if op == "AttentionInt8" else TensorProto.FLOAT
    types = {"past_key": cache, "past_value": cache, "position_ids": TensorProto.INT64}
    node = helper.make_node(op, names, ["out", "present_key", "present_value"], domain="hoe.ort",
                            num_heads=heads, kv_num_heads=kv_heads, scale=scale)
    inputs = [helper.make_tensor_value_info(n, types.get(n, TensorProto.FLOAT), None) for n in names]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)] + [
        helper.make_tensor_value_info(n, cache, None) for n in ("present_key", "present_value")]
    model = helper.make_model(helper.make_graph([node], "attention", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.register_custom_ops_library(str(library or kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _session(heads, kv_heads, scale, library=None, threads=1):
    return _op_session("Attention", NAMES, heads, kv_heads, scale, library, threads)


def _inputs(rng, batch, steps, past, heads, kv_heads, dim, capacity, pads):
    """Random q/k/v, a past of `past` columns in a buffer of `capacity`, and the additive mask of left-padded rows
    (row b: its first pads[b] past columns are padding, finfo.min as Hugging Face's mask) with causal new steps."""
    total = past + steps
    f = np.float32
    q = rng.normal(size=(batch, steps, heads * dim)).astype(f)
    k, v = (rng.normal(size=(batch, steps, kv_heads * dim)).astype(f) for _ in range(2))
    past_k, past_v = (rng.normal(size=(batch, kv_heads, capacity, dim)).astype(f) for _ in range(2))
    bias = np.zeros((batch, 1, steps, total), f)
    low = np.finfo(f).min
    for b in range(batch):
        bias[b, :, :, :min(pads[b % len(pads)], past)] = low  # padding lies in the past
        for t in range(steps):
            bias[b, 0, t, past + t + 1:] = low
    return q, k, v, past_k, past_v, bias


def _reference(q, k, v, past_k, past_v, bias, heads, kv_heads, scale):
    batch, steps, _ = q.shape
    total = bias.shape[-1]
    past = total - steps
    dim = past_k.shape[-1]
    keys = np.concatenate([past_k[:, :, :past], k.reshape(batch, steps, kv_heads, dim).transpose(0, 2, 1, 3)], 2)
    values = np.concatenate([past_v[:, :, :past], v.reshape(batch, steps, kv_heads, dim).transpose(0, 2, 1, 3)], 2)
    qh = q.reshape(batch, steps, heads, dim).transpose(0, 2, 1, 3).astype(np.float64)  # [B,H,T,D]
    kh = np.repeat(keys, heads // kv_heads, 1).astype(np.float64)
    vh = np.repeat(values, heads // kv_heads, 1).astype(np.float64)
    s = qh @ kh.transpose(0, 1, 3, 2) * scale + bias.astype(np.float64)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = (p @ vh).transpose(0, 2, 1, 3).reshape(batch, steps, heads * dim)
    return out, keys, values


# (batch, steps, past, heads, kv_heads, dim): decode steps (few rows), prompts (many rows, the tiled path), a
# prompt with a past, plain multi-head, a head size the tiles do not take (24) and one the AVX2 loops do not (12),
# a prompt of several row chunks per KV head (210 rows), a short prompt with no past (the decode path on the step's
# own rows only)
CASES = [(1, 1, 40, 9, 3, 64), (3, 1, 7, 4, 2, 32), (2, 13, 0, 9, 3, 64), (3, 7, 5, 4, 2, 16), (2, 5, 9, 4, 4, 32),
         (1, 9, 3, 6, 2, 24), (2, 3, 4, 2, 1, 12), (1, 70, 30, 9, 3, 64), (2, 2, 0, 4, 2, 16)]


@pytest.mark.parametrize("shared, threads", [(True, 1), (False, 1), (True, 2)],
                         ids=["shared-buffer", "growing", "shared-buffer-2-threads"])
@pytest.mark.parametrize("case", CASES, ids=["B{}-T{}-P{}-H{}-Hkv{}-D{}".format(*c) for c in CASES])
def test_attention_op_matches_numpy(case, shared, threads):
    """Several threads: the tasks (one KV head's rows, a prompt's in chunks) on onnxruntime's intra-op pool."""
    batch, steps, past, heads, kv_heads, dim = case
    rng = np.random.default_rng(sum(case))
    capacity = past + steps + 5 if shared else past
    q, k, v, past_k, past_v, bias = _inputs(rng, batch, steps, past, heads, kv_heads, dim, capacity, [0, 2, 1])
    scale = dim ** -0.5
    want, keys, values = _reference(q, k, v, past_k, past_v, bias, heads, kv_heads, scale)
    session = _session(heads, kv_heads, scale, threads=threads)
    feed = dict(zip(NAMES, (q, k, v, past_k, past_v, bias)))
    if shared:  # past and present one buffer, as the runtime binds them: only the new columns change
        binding = session.io_binding()
        buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in (past_k, past_v)]
        for name in NAMES[:3] + NAMES[5:]:
            binding.bind_cpu_input(name, feed[name])
        binding.bind_output("out")  # outputs come back in the order bound
        for name, present, value in zip(NAMES[3:5], ("present_key", "present_value"), buffers):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(present, value)
        session.run_with_iobinding(binding)
        out = binding.get_outputs()[0].numpy()
        present_k, present_v = past_k, past_v  # written in place
    else:
        out, present_k, present_v = session.run(None, feed)
        assert present_k.shape == (batch, kv_heads, past + steps, dim)
    total = past + steps
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(present_k[:, :, :total], keys)
    np.testing.assert_array_equal(present_v[:, :, :total], values)


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_narrower_paths_match_numpy(tmp_path, isa):
    """HOE_KERNELS_ISA=portable|avx2 is read when onnxruntime loads the library, so each runs in a fresh process:
    the numpy comparisons above (fp32 and int8 caches, every shape) on the capped path. The portable loops round
    differently from AVX2's, and AVX2's 8-lane decode tiles from AVX-512's 16-lane ones (the same products summed
    in another order), which shows that each cap took effect; where the CPU has no AVX-512, AVX2 is the default
    and a decode step bitwise the same."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "HOE_KERNELS_ISA": isa}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "cache_op_matches_numpy or attention_op_matches_numpy"], env=env, timeout=300,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"HOE_KERNELS_ISA={isa}:\n{run.stdout[-4000:]}{run.stderr[-2000:]}"
    case = 2 if isa == "portable" else 0  # a prompt, a decode step
    script = (f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              f"import test_attention_op as t; np.save({str(tmp_path / 'o.npy')!r}, t._run(t.CASES[{case}]))")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    capped, default = np.load(tmp_path / "o.npy"), _run(CASES[case])
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text(errors="ignore") if cpuinfo.exists() else ""
    wider = " avx512f" in flags and " avx512vl" in flags if isa == "avx2" else " avx2" in flags
    if wider:
        np.testing.assert_allclose(capped, default, rtol=1e-5, atol=1e-6)
        assert not np.array_equal(capped, default), f"HOE_KERNELS_ISA={isa} did not change the kernel's path"
    elif isa == "avx2":
        np.testing.assert_array_equal(capped, default)


def _run(case):
    batch, steps, past, heads, kv_heads, dim = case
    inputs = _inputs(np.random.default_rng(0), batch, steps, past, heads, kv_heads, dim, past, [0, 2, 1])
    return _session(heads, kv_heads, dim ** -0.5).run(None, dict(zip(NAMES, inputs)))[0]


def test_attention_op_refuses_bad_shapes_with_a_message():
    rng = np.random.default_rng(0)
    q, k, v, past_k, past_v, bias = _inputs(rng, 1, 1, 4, 4, 2, 16, 4, [0])
    session = _session(4, 2, 0.25)
    feed = dict(zip(NAMES, (q, k, v, past_k, past_v, bias)))
    with pytest.raises(Exception, match=r"hoe.ort.Attention: q \[1,1,48\]: expected \[1,T,64\]"):
        session.run(None, {**feed, "q": q[..., :48]})
    with pytest.raises(Exception, match=r"hoe.ort.Attention: bias \[1,1,1,9\]"):  # 8 past columns: only 4 there
        session.run(None, {**feed, "bias": np.zeros((1, 1, 1, 9), np.float32)})
    with pytest.raises(Exception, match="kv_num_heads >= 1 dividing num_heads"):
        _session(4, 3, 0.25).run(None, feed)


def _int8_session(heads, kv_heads, scale, threads=1):
    return _op_session("AttentionInt8", NAMES, heads, kv_heads, scale, threads=threads)


@pytest.mark.parametrize("shared, threads", [(True, 1), (False, 1), (True, 2)],
                         ids=["shared-buffer", "growing", "shared-buffer-2-threads"])
@pytest.mark.parametrize("case", CASES, ids=["B{}-T{}-P{}-H{}-Hkv{}-D{}".format(*c) for c in CASES])
def test_int8_cache_op_matches_numpy(case, shared, threads):
    """AttentionInt8: the past read back from its int8 rows, the step's own k/v exact, the new rows written with
    hoe.contract.kv_int8's rounding (the same bytes); the past's rows untouched."""
    from hoe.contract import kv_int8

    batch, steps, past, heads, kv_heads, dim = case
    rng = np.random.default_rng(sum(case) + 1)
    capacity = past + steps + 5 if shared else past
    q, k, v, past_k, past_v, bias = _inputs(rng, batch, steps, past, heads, kv_heads, dim, capacity, [0, 2, 1])
    past_k[:, :, :1] *= 0  # a row of zeros: scale 0
    rows_k, rows_v = kv_int8.quantize(past_k), kv_int8.quantize(past_v)
    scale = dim ** -0.5
    want, _, _ = _reference(q, k, v, kv_int8.dequantize(rows_k), kv_int8.dequantize(rows_v), bias, heads, kv_heads,
                            scale)
    session = _int8_session(heads, kv_heads, scale, threads=threads)
    feed = dict(zip(NAMES, (q, k, v, rows_k, rows_v, bias)))
    before_k, before_v = rows_k.copy(), rows_v.copy()
    if shared:
        binding = session.io_binding()
        buffers = [ort.OrtValue.ortvalue_from_numpy(a) for a in (rows_k, rows_v)]
        for name in NAMES[:3] + NAMES[5:]:
            binding.bind_cpu_input(name, feed[name])
        binding.bind_output("out")
        for name, present, value in zip(NAMES[3:5], ("present_key", "present_value"), buffers):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(present, value)
        session.run_with_iobinding(binding)
        out, present_k, present_v = binding.get_outputs()[0].numpy(), rows_k, rows_v
    else:
        out, present_k, present_v = session.run(None, feed)
        assert present_k.shape == (batch, kv_heads, past + steps, dim + 4) and present_k.dtype == np.int8
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    new = [kv_int8.quantize(a.reshape(batch, steps, kv_heads, dim).transpose(0, 2, 1, 3)) for a in (k, v)]
    for present, before, fresh in zip((present_k, present_v), (before_k, before_v), new):
        np.testing.assert_array_equal(present[:, :, :past], before[:, :, :past])
        np.testing.assert_array_equal(present[:, :, past:past + steps], fresh)


ROTARY_NAMES = NAMES + ["position_ids", "cos", "sin"]


def _rotary_session(op, heads, kv_heads, scale):
    """`op` with rotary inside: position_ids, cos and sin as inputs 6-8."""
    return _op_session(op, ROTARY_NAMES, heads, kv_heads, scale)


def _rope(x, positions, cos, sin, heads):
    """Non-interleaved RoPE in float64: x [B,T,heads·D], positions [B,T], cos/sin [max_pos, D/2]."""
    b, t, width = x.shape
    h = x.reshape(b, t, heads, width // heads).astype(np.float64)
    c, s = cos[positions][:, :, None].astype(np.float64), sin[positions][:, :, None].astype(np.float64)
    x1, x2 = np.split(h, 2, axis=-1)
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1).reshape(b, t, width).astype(np.float32)


@pytest.mark.parametrize("op", ["Attention", "AttentionInt8"])
@pytest.mark.parametrize("case", [(2, 1, 40, 9, 3, 64), (2, 13, 0, 4, 2, 32), (3, 5, 9, 4, 4, 16)],
                         ids=["decode", "prompt", "prompt-with-past"])
def test_rotary_inside_matches_rotating_first(op, case):
    """position_ids, cos and sin given: the op rotates q and k itself (rows at their own positions, as a left-padded
    batch has them); the same output as numpy on q and k rotated first, and the cache's new rows hold the rotated k."""
    from hoe.contract import kv_int8

    batch, steps, past, heads, kv_heads, dim = case
    rng = np.random.default_rng(sum(case) + 7)
    q, k, v, past_k, past_v, bias = _inputs(rng, batch, steps, past, heads, kv_heads, dim, past, [0, 2, 1])
    angles = np.arange(512)[:, None] * 10000.0 ** (-np.arange(dim // 2) / (dim // 2))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    positions = (past + np.arange(steps)[None] - np.array([0, 2, 1])[:batch, None]).clip(0).astype(np.int64)
    q_rot, k_rot = _rope(q, positions, cos, sin, heads), _rope(k, positions, cos, sin, kv_heads)
    int8 = op == "AttentionInt8"
    if int8:
        past_k, past_v = kv_int8.quantize(past_k), kv_int8.quantize(past_v)
    read = kv_int8.dequantize if int8 else (lambda rows: rows)
    want, _, _ = _reference(q_rot, k_rot, v, read(past_k), read(past_v), bias, heads, kv_heads, dim ** -0.5)
    out, present_k, _ = _rotary_session(op, heads, kv_heads, dim ** -0.5).run(
        None, dict(zip(ROTARY_NAMES, (q, k, v, past_k, past_v, bias, positions, cos, sin))))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    fresh = k_rot.reshape(batch, steps, kv_heads, dim).transpose(0, 2, 1, 3)
    if int8:
        assert kv_int8.steps_apart(present_k[:, :, past:], kv_int8.quantize(fresh)) <= 1
    else:
        np.testing.assert_allclose(present_k[:, :, past:], fresh, rtol=1e-6, atol=1e-6)


def test_rotary_inputs_are_checked():
    rng = np.random.default_rng(0)
    q, k, v, past_k, past_v, bias = _inputs(rng, 1, 1, 4, 4, 2, 16, 4, [0])
    cos = sin = np.ones((8, 8), np.float32)
    session = _rotary_session("Attention", 4, 2, 0.25)
    feed = dict(zip(ROTARY_NAMES, (q, k, v, past_k, past_v, bias, np.array([[4]], np.int64), cos, sin)))
    session.run(None, feed)
    with pytest.raises(Exception, match=r"position_ids holds 8: expected 0 <= position < 8"):
        session.run(None, {**feed, "position_ids": np.array([[8]], np.int64)})
    with pytest.raises(Exception, match=r"position_ids \[1,2\]: expected \[1,1\]"):
        session.run(None, {**feed, "position_ids": np.array([[3, 4]], np.int64)})
    with pytest.raises(Exception, match=r"cos \[8,4\], sin \[8,8\]: expected both \[max_pos,8\]"):
        session.run(None, {**feed, "cos": np.ones((8, 4), np.float32)})


def test_int8_cache_op_refuses_rows_without_their_scale():
    from hoe.contract import kv_int8

    rng = np.random.default_rng(0)
    q, k, v, past_k, past_v, bias = _inputs(rng, 1, 1, 4, 4, 2, 16, 4, [0])
    rows = kv_int8.quantize(past_k)
    feed = dict(zip(NAMES, (q, k, v, rows, rows, bias)))
    session = _int8_session(4, 2, 0.25)
    with pytest.raises(Exception, match=r"past_key \[1,2,4,4\]: expected rows of D int8 values and their 4-byte"):
        session.run(None, {**feed, "past_key": rows[..., :4].copy(), "past_value": rows[..., :4].copy()})
    with pytest.raises(Exception, match=r"q \[1,1,64\]: expected \[1,T,48\]"):  # fp32 rows read as int8: D = 12
        session.run(None, {**feed, "past_key": past_k.view(np.int8)[..., :16].copy(),
                           "past_value": past_v.view(np.int8)[..., :16].copy()})
