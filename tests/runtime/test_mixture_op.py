"""The Mixture op of hoe's kernels library on its own, against numpy: odd widths (a padded last tile), lora_B rows
over several blocks, a batch of several steps with one router_mix per row, block offsets; and its errors."""

import numpy as np
import pytest
from hoe.runtime import kernels

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")


def _mixture_inputs(rng, widths, experts, rank, routers, block, symmetric):
    from hoe.core import packing
    from hoe.core.packing import SiteGroup
    from hoe.export.baked import _mixture_b, _quantize_b
    from hoe.export.quantize import QuantConfig

    modules = tuple(f"layer.m{i}" for i in range(len(widths)))
    cfg = QuantConfig(weights="int4", block_size=block, symmetric=symmetric)
    b = {packing.lora_b(m): rng.normal(size=(experts * rank, w)).astype(np.float32) for m, w in zip(modules, widths)}
    group = SiteGroup(modules, 16, tuple(widths))
    dequantized = [_quantize_b(b[packing.lora_b(m)], cfg).dequantize() for m in modules]
    return _mixture_b(group, b, cfg), dequantized


def _reference(y, f, mix, lora_b, h_offset, widths, experts, rank, routers, offsets=None, sums_offset=0):
    batch, steps = f.shape[:2]
    m, er = len(widths), experts * rank
    h = f[..., h_offset: h_offset + m * er].reshape(batch, steps, m, experts, rank)
    logits = f[..., h_offset + m * er: h_offset + m * er + m * routers * experts].reshape(batch, steps, m, routers,
                                                                                           experts)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gates = np.einsum("bk,btmke->btme", mix, p)
    hg = (h * gates[..., None]).reshape(batch, steps, m, er)
    n = sum(widths)
    base = y[..., :n].astype(np.float64)
    if offsets is not None:
        base = base + f[..., sums_offset: sums_offset + offsets.shape[0]] @ offsets
    cols = np.cumsum([0, *widths])
    return np.concatenate([base[..., cols[i]:cols[i + 1]] + hg[:, :, i] @ lora_b[i] for i in range(m)], axis=-1)


def _session(inputs, initializers, attrs):
    from onnx import TensorProto, helper, numpy_helper

    names = ["Y", "F", "router_mix", "levels", "scales", "zeros", "offsets"][: len(inputs) + len(initializers)]
    node = helper.make_node("Mixture", names, ["Z"], domain="hoe.ort", **attrs)
    graph = helper.make_graph(
        [node], "mixture",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(a.shape)) for name, a in zip(names, inputs)],
        [helper.make_tensor_value_info("Z", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a, name) for name, a in zip(names[len(inputs):], initializers)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


# (widths, experts, rank, routers, block, symmetric, offsets)
CASES = [([70, 5, 128], 3, 8, 4, 16, True, False), ([64], 5, 8, 2, 32, False, False),
         ([33, 200], 2, 4, 7, 16, True, True)]


def _run_case(case):
    """One case through the op -> (Z, the numpy reference)."""
    widths, experts, rank, routers, block, symmetric, with_offsets = case
    rng = np.random.default_rng(len(widths))
    (levels, scales, zeros), lora_b = _mixture_inputs(rng, widths, experts, rank, routers, block, symmetric)
    batch, steps, n, m = 3, 2, sum(widths), len(widths)
    k_blocks = 4
    h_offset = n + (k_blocks if with_offsets else 0)
    f = rng.normal(size=(batch, steps, h_offset + m * experts * rank + m * routers * experts)).astype(np.float32)
    masked = rng.random(experts) < 0.5  # masked router outputs, as the router bias's -inf has them
    masked[-1] = False  # (never all of one router's experts)
    tail = f[..., -experts:]
    tail[..., masked] = -np.inf
    mix = rng.dirichlet(np.ones(routers), size=batch).astype(np.float32)
    attrs = dict(h_offset=h_offset, block_size=block, modules=m, **{f"width_{i}": w for i, w in enumerate(widths)})
    initializers = [levels, scales, zeros]
    offsets = None
    if with_offsets:
        offsets = rng.normal(size=(k_blocks, n)).astype(np.float32)
        initializers.append(offsets)
        attrs["sums_offset"] = n
    session = _session([f, f, mix], initializers, attrs)
    z = session.run(None, {"Y": f, "F": f, "router_mix": mix})[0]
    assert z.shape == (batch, steps, n)
    return z, _reference(f, f, mix, lora_b, h_offset, widths, experts, rank, routers, offsets, n)


@pytest.mark.parametrize("case", CASES, ids=[f"widths{c[0]}-E{c[1]}-r{c[2]}" for c in CASES])
def test_mixture_op_matches_numpy(case):
    z, want = _run_case(case)
    np.testing.assert_allclose(z, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_narrower_paths_match_numpy(tmp_path, isa):
    """HOE_KERNELS_ISA (read when onnxruntime loads the library, so in a fresh process) caps the kernel's path.
    The portable loop rounds differently from the vector ones (FMA), which shows the switch took effect."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = (f"import sys, numpy as np; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              f"import test_mixture_op as t; np.save({str(tmp_path / 'z.npy')!r}, t._run_case(t.CASES[0])[0])")
    env = {**os.environ, "HOE_KERNELS_ISA": isa}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=120)
    narrow = np.load(tmp_path / "z.npy")
    z, want = _run_case(CASES[0])
    np.testing.assert_allclose(narrow, want, rtol=1e-4, atol=1e-4)
    cpuinfo = Path("/proc/cpuinfo")
    if isa == "portable" and cpuinfo.exists() and " avx2" in cpuinfo.read_text(errors="ignore"):
        assert not np.array_equal(narrow, z), "HOE_KERNELS_ISA=portable did not change the kernel's path"


def test_mixture_op_refuses_bad_shapes_with_a_message():
    rng = np.random.default_rng(0)
    (levels, scales, zeros), _ = _mixture_inputs(rng, [64], 3, 8, 2, 32, True)
    f = rng.normal(size=(1, 1, 64 + 24 + 6)).astype(np.float32)
    attrs = dict(h_offset=64, block_size=32, modules=1, width_0=64)
    bad_mix = np.ones((1, 5), np.float32)  # 5 routers: F holds 6 logits, not 1·5·E
    session = _session([f, f, bad_mix], [levels, scales, zeros], attrs)
    with pytest.raises(Exception, match="hoe.ort.Mixture: F"):
        session.run(None, {"Y": f, "F": f, "router_mix": bad_mix})
    wide = dict(attrs, width_0=128)  # levels hold one tile, the attribute asks for two
    session = _session([f, f, np.ones((1, 2), np.float32)], [levels, scales, zeros], wide)
    with pytest.raises(Exception, match="expected"):
        session.run(None, {"Y": f, "F": f, "router_mix": np.ones((1, 2), np.float32)})


def _fused_sessions(widths, experts, rank, routers, block, with_offsets, norm=False, glu=False):
    """(MatMulInt4 -> Mixture as two nodes, the same as one MatMulInt4Mixture), and the inputs of both. norm: the
    one node has the norm prologue (inputs skip and gamma, output x + skip after the modules'), fed too; glu: the
    SwiGLU epilogue (one output silu(z0)·z1 in place of the modules')."""
    from hoe.export.linear_kernel import pack
    from hoe.export.quantize import quantize_blocks
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(sum(widths))
    (levels, scales, zeros), _ = _mixture_inputs(rng, widths, experts, rank, routers, block, True)
    m, n, k_in, k_blocks = len(widths), sum(widths), 96, 3
    h_offset = n + (k_blocks if with_offsets else 0)
    cols = h_offset + m * experts * rank + m * routers * experts
    q = quantize_blocks(rng.normal(scale=0.1, size=(k_in, cols)).astype(np.float32), 4, 32, symmetric=True)
    bias = rng.normal(size=cols).astype(np.float32)
    bias[-1] = -np.inf  # a masked router output, as the router bias has them
    mix_attrs = dict(h_offset=h_offset, block_size=block, modules=m, **{f"width_{i}": w for i, w in enumerate(widths)})
    inits = [numpy_helper.from_array(a, name) for a, name in
             [(pack(q), "tiles"), (bias, "bias"), (levels, "levels"), (scales, "scales"), (zeros, "zeros")]]
    extra = []
    if with_offsets:
        inits.append(numpy_helper.from_array(rng.normal(size=(k_blocks, n)).astype(np.float32), "offsets"))
        mix_attrs["sums_offset"] = n
        extra = ["offsets"]
    linear = dict(K=k_in, N=cols, block_size=32, accuracy_level=0)
    outs = [f"z{i}" for i in range(m)]
    two = [helper.make_node("MatMulInt4", ["x", "tiles", "bias"], ["F"], domain="hoe.ort", **linear),
           helper.make_node("Mixture", ["F", "F", "router_mix", "levels", "scales", "zeros", *extra], outs,
                            domain="hoe.ort", **mix_attrs)]
    prologue = [extra[0] if extra else "", "skip", "gamma"] if norm else extra
    one = [helper.make_node("MatMulInt4Mixture", ["x", "tiles", "bias", "router_mix", "levels", "scales", "zeros",
                                                  *prologue], (["h"] if glu else outs) + ["sum"] * norm,
                            domain="hoe.ort", **{**linear, **mix_attrs, **({"epsilon": 1e-5} if norm else {}),
                                                 **({"swiglu": 1} if glu else {})})]
    sessions = []
    for nodes, fed in ((two, ("x", "router_mix")), (one, ("x", "router_mix") + ("skip", "gamma") * norm)):
        graph = helper.make_graph(nodes, "fused", [helper.make_tensor_value_info(v, TensorProto.FLOAT, None)
                                                   for v in fed],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                   for o in nodes[-1].output], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
        options = ort.SessionOptions()
        options.register_custom_ops_library(str(kernels.library()))
        sessions.append(ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]))
    feed = {"x": rng.normal(size=(3, 2, k_in)).astype(np.float32),
            "router_mix": rng.dirichlet(np.ones(routers), size=3).astype(np.float32)}
    if norm:
        feed.update(skip=rng.normal(size=(3, 2, k_in)).astype(np.float32),
                    gamma=rng.normal(1.0, 0.3, size=k_in).astype(np.float32))
    return sessions, feed


@pytest.mark.parametrize("offsets", [False, True], ids=["plain", "offsets"])
def test_fused_product_and_mixture_equal_the_two_nodes(offsets):
    """MatMulInt4Mixture computes exactly what MatMulInt4 and the Mixture on its output compute (the same code on
    the same numbers, only the tensor between them is gone): bitwise, over batches of steps and several modules."""
    (two, one), feed = _fused_sessions([70, 5, 128], 3, 8, 4, 32, offsets)  # one block_size: the tiles' too
    want, got = two.run(None, feed), one.run(None, feed)
    assert len(got) == 3 and [g.shape for g in got] == [(3, 2, 70), (3, 2, 5), (3, 2, 128)]
    for w, g in zip(want, got):
        assert np.isfinite(w).all() and np.abs(w).max() > 0
        np.testing.assert_array_equal(g, w)
    # a decode step after a prompt: the scratch shrinks, nothing stale is read
    small = {"x": feed["x"][:1, :1], "router_mix": feed["router_mix"][:1]}
    for w, g in zip(two.run(None, small), one.run(None, small)):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("offsets", [False, True], ids=["plain", "offsets"])
def test_fused_op_with_the_norm_prologue(offsets):
    """With skip and gamma the op computes the two nodes on rms_norm(x + skip)·gamma (norm.h) and returns x + skip
    bitwise after the modules' outputs; then a decode step after the prompt."""
    from runtime_helpers import rms_norm

    (two, one), feed = _fused_sessions([70, 5, 128], 3, 8, 4, 32, offsets, norm=True)
    for rows in (slice(None), slice(0, 1)):
        part = {k: v[rows, rows] if v.ndim == 3 else v[rows] if k == "router_mix" else v for k, v in feed.items()}
        normed = rms_norm(part["x"] + part["skip"], part["gamma"], 1e-5).astype(np.float32)
        want = two.run(None, {"x": normed, "router_mix": part["router_mix"]})
        got = one.run(None, part)
        assert len(got) == 4
        for w, g in zip(want, got):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * np.abs(w).max())
        np.testing.assert_array_equal(got[3], part["x"] + part["skip"])


@pytest.mark.parametrize("norm", [False, True], ids=["plain", "norm"])
def test_fused_op_with_the_swiglu_epilogue(norm):
    """With swiglu = 1 the op returns silu(gate)·up (activation.h) of the two nodes' modules (gate, up), with block
    offsets, with and without the norm prologue (then x + skip after it); a prompt, then a decode step."""
    from runtime_helpers import rms_norm, swiglu

    (two, one), feed = _fused_sessions([72, 72], 3, 8, 4, 32, True, norm=norm, glu=True)
    for rows in (slice(None), slice(0, 1)):
        part = {k: v[rows, rows] if v.ndim == 3 else v[rows] if k == "router_mix" else v for k, v in feed.items()}
        x = rms_norm(part["x"] + part["skip"], part["gamma"], 1e-5).astype(np.float32) if norm else part["x"]
        gate, up = two.run(None, {"x": x, "router_mix": part["router_mix"]})
        want = swiglu(np.concatenate([gate, up], axis=-1))
        got = one.run(None, part)
        assert len(got) == 1 + norm and got[0].shape == gate.shape and np.abs(want).max() > 0
        np.testing.assert_allclose(got[0], want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
        if norm:
            np.testing.assert_array_equal(got[1], part["x"] + part["skip"])


def test_fused_op_refuses_swiglu_without_two_halves():
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4Mixture: swiglu with 3 modules .*expected 2 of one "
                                        r"width"):
        _fused_sessions([70, 5, 128], 3, 8, 4, 32, False, glu=True)


def test_fused_op_refuses_bad_shapes_with_a_message():
    (_, one), feed = _fused_sessions([64], 3, 8, 2, 32, False)
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4Mixture: x \[3,2,95\]: expected \[...,96\]"):
        one.run(None, {**feed, "x": feed["x"][..., :95]})
    with pytest.raises(Exception, match="hoe.ort.Mixture: router_mix"):
        one.run(None, {**feed, "router_mix": feed["router_mix"][:2]})
