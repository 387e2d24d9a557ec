"""The MatMulInt4 op of hoe's kernels library (runtime/csrc/linear.h) on its own: on export/linear_kernel.py's
layout of a MatMulNBits weight it computes what onnxruntime's MatMulNBits computes on the same weight — exactly
x·Ŵ at accuracy_level 0 (against float64 numpy), and with int8 activations at level 4 (against MatMulNBits at
level 4 and numpy) — over odd N and K, blocks of 32 to 128, a bias, batches of rows, each ISA path; and its errors."""

import numpy as np
import pytest
from hoe.runtime import kernels
from runtime_helpers import rms_norm, swiglu

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library "
                                                                  "(no C++17 compiler at install)")

# (rows, K, N, block, bias)
CASES = [(1, 576, 1536, 32, False), (3, 70, 100, 32, True), (5, 256, 64, 64, False), (2, 300, 130, 128, True)]


def _weight(k, n, block, seed):
    from hoe.export.quantize import quantize_blocks

    w = np.random.default_rng(seed).normal(scale=0.05, size=(k, n)).astype(np.float32)
    return quantize_blocks(w, 4, block, symmetric=True)


def _session(op, q, level, bias):
    from hoe.export.linear_kernel import pack
    from onnx import TensorProto, helper, numpy_helper

    if op == "MatMulInt4":
        inits = [numpy_helper.from_array(pack(q), "packed")]
        inputs, attrs, domain = ["x", "packed"], dict(K=q.k, N=q.n, accuracy_level=level), "hoe.ort"
    else:
        inits = [numpy_helper.from_array(q.packed, "packed"), numpy_helper.from_array(q.scales, "scales")]
        inputs, domain = ["x", "packed", "scales"], "com.microsoft"
        attrs = dict(K=q.k, N=q.n, bits=4, block_size=q.block_size, accuracy_level=level)
        if bias is not None:
            inputs += ["", ""]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
        inputs.append("bias")
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], domain=domain, **attrs)], "linear",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _inputs(case):
    rows, k, n, block, with_bias = case
    q = _weight(k, n, block, seed=k + n)
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 1, k)).astype(np.float32)
    bias = rng.normal(size=n).astype(np.float32) if with_bias else None
    return q, x, bias


def _run(case, level):
    q, x, bias = _inputs(case)
    return _session("MatMulInt4", q, level, bias).run(None, {"x": x})[0]


@pytest.mark.parametrize("case", CASES)
def test_exact_level_is_x_times_the_dequantized_weight(case):
    q, x, bias = _inputs(case)
    want = x.astype(np.float64) @ q.dequantize().astype(np.float64) + (0 if bias is None else bias)
    got = _run(case, 0)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_exact_level_keeps_activations_far_from_zero():
    """Activations around 50 (a prompt's first token in SmolLM2): summing level · x and taking 8 · sum(x) off
    afterwards cancels ~7 digits; the product sums (level − 8) · x, as the dequantized weight does."""
    q, x, _ = _inputs(CASES[0])
    x = x + 50.0
    want = x.astype(np.float64) @ q.dequantize().astype(np.float64)
    got = _session("MatMulInt4", q, 0, None).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=6e-7 * np.abs(want).max())  # cancelling: 1.7e-6


@pytest.mark.parametrize("case", CASES)
def test_int8_level_matches_matmulnbits(case):
    """Both round each block of activations to int8: the op lands as close to x·Ŵ as MatMulNBits does."""
    q, x, bias = _inputs(case)
    exact = x.astype(np.float64) @ q.dequantize().astype(np.float64) + (0 if bias is None else bias)
    got = _run(case, 4)
    peer = _session("MatMulNBits", q, 4, bias).run(None, {"x": x})[0]
    scale = np.abs(exact).max()
    assert np.abs(got - exact).max() <= max(2 * np.abs(peer - exact).max(), 1e-4 * scale)
    assert np.abs(got - exact).max() < 2e-2 * scale  # int8 rounding, not a wrong sum
    assert np.abs(got - exact).max() > 0 or case[1] < 32  # the int8 path ran (it rounds)


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_narrower_paths_match(tmp_path, isa):
    """HOE_KERNELS_ISA is read when onnxruntime loads the library: each capped path in a fresh process, through
    the same comparisons."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HOE_KERNELS_ISA": isa}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
                          "exact_level or int8_level or swiglu_epilogue_is"], env=env, timeout=300,
                         capture_output=True, text=True)
    assert run.returncode == 0, f"HOE_KERNELS_ISA={isa}:\n{run.stdout[-4000:]}{run.stderr[-2000:]}"


def test_refuses_bad_shapes_with_a_message():
    q, x, _ = _inputs(CASES[1])
    session = _session("MatMulInt4", q, 4, None)
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4: x \[3,1,69\]: expected \[...,70\]"):
        session.run(None, {"x": x[..., :69]})


def test_pack_refuses_what_the_kernel_cannot_compute():
    from hoe.core.errors import ConfigError
    from hoe.export.linear_kernel import pack
    from hoe.export.quantize import quantize_blocks

    w = np.ones((64, 64), np.float32)
    for q in (quantize_blocks(w, 4, 16, True), quantize_blocks(w, 4, 32, False), quantize_blocks(w, 8, 32, True)):
        with pytest.raises(ConfigError, match="symmetric int4"):
            pack(q)


def _gather_session(op, q):
    """GatherInt4 on pack(q), or GatherBlockQuantized on MatMulNBits' bytes of q as a [N, K] table."""
    from hoe.export.linear_kernel import pack
    from onnx import TensorProto, helper, numpy_helper

    if op == "GatherInt4":
        inits, domain = [numpy_helper.from_array(pack(q), "packed")], "hoe.ort"
        node = helper.make_node(op, ["packed", "ids"], ["y"], domain=domain, K=q.k, N=q.n)
    else:
        domain = "com.microsoft"
        inits = [numpy_helper.from_array(q.packed.reshape(q.n, -1), "packed"),
                 numpy_helper.from_array(q.scales, "scales")]
        node = helper.make_node(op, ["packed", "ids", "scales"], ["y"], domain=domain, gather_axis=0,
                                quantize_axis=1, block_size=q.block_size, bits=4)
    graph = helper.make_graph([node], "gather", [helper.make_tensor_value_info("ids", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(domain, 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("shape", [(576, 1000, 32), (64, 97, 64), (96, 130, 32)])
def test_gather_reads_the_tables_rows_from_the_tiles(shape):
    """A tied table [N, K] read through the lm_head's tiles: row id = column id of W, bitwise what
    GatherBlockQuantized reads from MatMulNBits' layout of the same weight, ids in every group and slice."""
    k, n, block = shape
    q = _weight(k, n, block, seed=k)
    ids = np.random.default_rng(n).integers(0, n, size=(2, 7))
    ids[0, :3] = [0, n - 1, 63 % n]
    got = _gather_session("GatherInt4", q).run(None, {"ids": ids})[0]
    assert got.shape == (2, 7, k)
    np.testing.assert_array_equal(got, q.dequantize().T[ids])
    if k % block == 0:  # GatherBlockQuantized takes whole blocks
        np.testing.assert_array_equal(got, _gather_session("GatherBlockQuantized", q).run(None, {"ids": ids})[0])


def test_gather_refuses_an_id_outside_the_table():
    q = _weight(64, 97, 32, seed=1)
    session = _gather_session("GatherInt4", q)
    with pytest.raises(Exception, match=r"hoe.ort.GatherInt4: id 97: expected 0 <= id < 97"):
        session.run(None, {"ids": np.array([[3, 97]], np.int64)})


def _halves(rows, k):
    """Activations whose int8 rounding hits exact halves: absmax 127 (scale 1), then k/2, ±0.5, ±1.5, ..."""
    x = np.random.default_rng(7).normal(scale=20, size=(rows, 1, k)).astype(np.float32)
    x[..., ::32] = 127.0
    x[..., 1::4] = (np.arange(x[..., 1::4].size).reshape(x[..., 1::4].shape) % 9 - 4) + 0.5
    return x


def test_every_path_rounds_activations_alike(tmp_path):
    """The int8 rounding of activations (an AVX-512 loop on VNNI CPUs, plain loops elsewhere) gives the same
    levels on each path, halves included (rounded to even): the outputs differ by fp32 rounding only (FMA or
    not), where one level apart at a half would cost ~2e-3 of the output scale."""
    import os
    import subprocess
    import sys

    q, _, bias = _inputs(CASES[1])
    x = _halves(3, q.k)
    np.save(tmp_path / "x.npy", x)
    here = _session("MatMulInt4", q, 4, bias).run(None, {"x": x})[0]
    code = (f"import sys, numpy as np; sys.path.insert(0, {os.path.dirname(__file__)!r}); import test_linear_op as t; "
            f"q, _, b = t._inputs(t.CASES[1]); x = np.load({str(tmp_path / 'x.npy')!r}); "
            f"np.save({str(tmp_path / 'y.npy')!r}, t._session('MatMulInt4', q, 4, b).run(None, {{'x': x}})[0])")
    for isa in ("avx2", "portable"):
        run = subprocess.run([sys.executable, "-c", code], env={**os.environ, "HOE_KERNELS_ISA": isa}, timeout=300,
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr[-2000:]
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here, rtol=0, atol=1e-6 * np.abs(here).max(),
                                   err_msg=f"HOE_KERNELS_ISA={isa}")


def _normed_session(q, level, skip, epsilon=1e-5, bias=None, sum_output=True):
    """MatMulInt4 with the norm prologue: inputs x, packed, bias?, skip?, gamma; outputs y and (with skip) x + skip."""
    from hoe.export.linear_kernel import pack
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(pack(q), "packed")]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "bias"))
    inputs = ["x", "packed", "bias" if bias is not None else "", "skip" if skip else "", "gamma"]
    outputs = ["y", "sum"] if skip and sum_output else ["y"]
    attrs = dict(K=q.k, N=q.n, accuracy_level=level, **({} if epsilon is None else {"epsilon": epsilon}))
    graph = helper.make_graph([helper.make_node("MatMulInt4", inputs, outputs, domain="hoe.ort", **attrs)], "normed",
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, None)
                               for v in ("x", "skip", "gamma")[: 3 if skip else 1]]
                              + ([] if skip else [helper.make_tensor_value_info("gamma", TensorProto.FLOAT, None)]),
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("skip", [True, False], ids=["skip", "plain"])
@pytest.mark.parametrize("case", CASES)
def test_norm_prologue_is_the_norm_then_the_product(case, skip):
    """Given gamma the op computes rms_norm(x + skip)·gamma · Ŵ (the SkipSimplifiedLayerNormalization it stands
    for, then the product), and x + skip bitwise as the residual output; over the cases' shapes, odd K included."""
    q, x, bias = _inputs(case)
    rng = np.random.default_rng(case[1])
    extra = rng.normal(size=x.shape).astype(np.float32)
    gamma = rng.normal(1.0, 0.3, size=q.k).astype(np.float32)
    feed = {"x": x, "gamma": gamma, **({"skip": extra} if skip else {})}
    got = _normed_session(q, 0, skip, bias=bias).run(None, feed)
    residual = x + extra if skip else x
    want = rms_norm(residual, gamma, 1e-5) @ q.dequantize().astype(np.float64) + (0 if bias is None else bias)
    assert len(got) == (2 if skip else 1) and got[0].shape == want.shape
    np.testing.assert_allclose(got[0], want, rtol=0, atol=2e-5 * np.abs(want).max())
    if skip:
        np.testing.assert_array_equal(got[1], residual)
    level4 = _normed_session(q, 4, skip, bias=bias).run(None, feed)[0]  # int8 activations: of the normed rows
    np.testing.assert_allclose(level4, want, rtol=0, atol=2e-2 * np.abs(want).max())


def test_norm_prologue_without_the_residual_output():
    """The final norm before the lm_head: its sum is read by nothing, and the optional output is left out."""
    q, x, _ = _inputs(CASES[0])
    gamma = np.full(q.k, 0.5, np.float32)
    skip = np.ones_like(x)
    (got,) = _normed_session(q, 0, True, sum_output=False).run(None, {"x": x, "skip": skip, "gamma": gamma})
    want = rms_norm(x + skip, gamma, 1e-5) @ q.dequantize().astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * np.abs(want).max())


def _swiglu_session(q, level, norm=False):
    """MatMulInt4 with the SwiGLU epilogue (swiglu = 1): inputs x, packed (and with norm: -, skip, gamma), outputs
    silu(gate)·up (and with norm: x + skip)."""
    from hoe.export.linear_kernel import pack
    from onnx import TensorProto, helper, numpy_helper

    inputs, outputs = ["x", "packed", *(["", "skip", "gamma"] if norm else [])], ["h", *(["sum"] if norm else [])]
    attrs = dict(K=q.k, N=q.n, accuracy_level=level, swiglu=1, **({"epsilon": 1e-5} if norm else {}))
    graph = helper.make_graph([helper.make_node("MatMulInt4", inputs, outputs, domain="hoe.ort", **attrs)], "glu",
                              [helper.make_tensor_value_info(v, TensorProto.FLOAT, None)
                               for v in ["x", *(["skip", "gamma"] if norm else [])]],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              [numpy_helper.from_array(pack(q), "packed")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("hoe.ort", 1)])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(kernels.library()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("level", [0, 4])
@pytest.mark.parametrize("case", CASES)
def test_swiglu_epilogue_is_silu_gate_times_up_of_the_product(case, level):
    """With swiglu = 1 the op returns silu(gate)·up of its own product's halves [gate | up] (activation.h), over
    the cases' shapes (N/2 of 32 to 768, not a multiple of 8 too), prompt rows and a decode row; with the norm
    prologue too."""
    q, x, _ = _inputs(case)
    session = _swiglu_session(q, level)
    for rows in (x, x[:1]):
        (got,) = session.run(None, {"x": rows})
        want = swiglu(_session("MatMulInt4", q, level, None).run(None, {"x": rows})[0])
        assert got.shape == want.shape == rows.shape[:-1] + (q.n // 2,)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    gamma = np.random.default_rng(1).normal(1.0, 0.3, size=q.k).astype(np.float32)
    skip = np.ones_like(x)
    got, residual = _swiglu_session(q, level, norm=True).run(None, {"x": x, "skip": skip, "gamma": gamma})
    normed = rms_norm(x + skip, gamma, 1e-5).astype(np.float32)
    want = swiglu(_session("MatMulInt4", q, level, None).run(None, {"x": normed})[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(residual, x + skip)


def test_swiglu_epilogue_refuses_an_odd_width():
    q = _weight(64, 97, 32, seed=3)
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4: swiglu with N 97: expected an even N"):
        _swiglu_session(q, 0)


def test_norm_prologue_refuses_bad_inputs_with_a_message():
    q, x, _ = _inputs(CASES[1])
    gamma, skip = np.ones(q.k, np.float32), np.ones_like(x)
    session = _normed_session(q, 0, True)
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4: gamma \[69\]: expected \[70\]"):
        session.run(None, {"x": x, "skip": skip, "gamma": gamma[:69]})
    with pytest.raises(Exception, match=r"hoe.ort.MatMulInt4: skip \[3,2,70\]: expected x's \[3,1,70\]"):
        session.run(None, {"x": x, "skip": np.ones((3, 2, q.k), np.float32), "gamma": gamma})
    with pytest.raises(Exception, match="hoe.ort.MatMulInt4: gamma without an epsilon attribute"):
        _normed_session(q, 0, False, epsilon=None).run(None, {"x": x, "gamma": gamma})
