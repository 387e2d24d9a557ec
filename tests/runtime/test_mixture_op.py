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
