"""The fused onnxruntime graph (`--target ort-cpu`: GroupQueryAttention, KV buffer shared by past and present),
and the same with hoe's Attention op (`--attention-kernel`), against the standard graph (`--target tensorrt`) of
the same tiny HoE model, run by the same runtime.

Both graphs are validated against PyTorch by the exporter (tests/export); here long generations check the
shared buffer itself: 300 greedy tokens (the buffer grows past its first 256 columns), per-row preferences,
a mid-generation preference switch, and two generators stepping in two threads.
"""

import threading

import hoe.runtime as hr
import numpy as np
import pytest
from hoe.runtime import kernels

PROMPTS = [[5, 9, 3, 7, 22, 40, 8, 2], [11, 4, 17]]  # row 1 left padded by 5
PREFS = [[1.0, 0.0, 0.0], [0.1, 0.3, 0.6]]
N_LONG = 300


KERNEL = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library")
CASES = [pytest.param((arch, kernel), id=f"{arch}{'-attention-kernel' * kernel}", marks=[KERNEL] if kernel else [])
         for kernel in (False, True) for arch in ("llama", "qwen2", "mistral")]


@pytest.fixture(scope="module", params=CASES)
def pair(request, tmp_path_factory):
    """(fused model, standard model) of one tiny HoE checkpoint with a 512-token context; the fused graph's
    attention is GroupQueryAttention, or hoe's Attention op."""
    from runtime_export import exported_folder
    from tiny_models import tiny_hoe

    arch, kernel = request.param
    root = tmp_path_factory.mktemp(f"fused_{arch}")
    base, ckpt = tiny_hoe(arch, root, context=512)
    base.save_pretrained(root / "base")
    ckpt.save(root / "hoe")
    fused = exported_folder(root / "base", root / "hoe", root / "fused", target="ort-cpu", attention_kernel=kernel)
    standard = exported_folder(root / "base", root / "hoe", root / "standard", target="tensorrt")
    with hr.load(fused, threads=1) as f, hr.load(standard, threads=1) as s:
        yield f, s


def _greedy(n):
    return hr.GenerationConfig(max_new_tokens=n, ignore_eos=True)


def test_fused_export_declares_a_shared_buffer(pair):
    fused, standard = pair
    assert fused.manifest.data["kv_cache"]["shared_buffer"] is True
    assert fused.manifest.data["model"]["target"] == "ort-cpu"
    assert not standard.manifest.data["kv_cache"].get("shared_buffer")
    assert fused.backend.shared_kv and not standard.backend.shared_kv
    kernel = fused.manifest.data["kv_cache"].get("kernel")
    assert kernel in (None, kernels.ATTENTION_KERNEL) and kernels.needs_kernels(fused.manifest.data) == bool(kernel)


def test_300_tokens_batch2_equal_the_standard_graph(pair):
    fused, standard = pair
    got = fused.generate(PROMPTS, PREFS, _greedy(N_LONG))
    want = standard.generate(PROMPTS, PREFS, _greedy(N_LONG))
    assert [len(r.token_ids) for r in got] == [N_LONG, N_LONG]
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert got[0].token_ids != got[1].token_ids  # the rows are not trivially equal


def test_buffer_grows_and_keeps_the_cache(pair):
    """Step by step: logits of the two graphs agree at every past length 0..299, across the buffer's growth."""
    fused, standard = pair
    gens = [m.generator(PREFS, _greedy(N_LONG)) for m in (fused, standard)]
    worst = 0.0
    for g in gens:
        g.append_tokens(PROMPTS)
    fb, sb = fused.backend, standard.backend
    capacities = set()
    original = fb.step, sb.step
    seen = {}

    def spy(backend, key):
        def step(state, *args):
            logits = original[key](state, *args)
            seen[key] = logits
            return logits
        return step

    fb.step, sb.step = spy(fb, 0), spy(sb, 1)
    try:
        while not gens[0].is_done():
            a, b = gens[0].generate_next_token(), gens[1].generate_next_token()
            assert (a == b).all()
            worst = max(worst, float(np.abs(seen[0] - seen[1]).max()))
            capacities.add(gens[0]._state.capacity)
    finally:
        fb.step, sb.step = original
    assert worst < 1e-4, worst
    assert min(capacities) == 256 and max(capacities) == 512, capacities  # grew once, past 256 columns


def test_mid_generation_switch_equals_the_standard_graph(pair):
    fused, standard = pair
    out = []
    for m in (fused, standard):
        gen = m.generator(PREFS, _greedy(40))
        gen.append_tokens(PROMPTS)
        for step in range(40):
            if step == 15:
                gen.set_preference([0.0, 0.0, 1.0], rows=[0])
            if step == 25:
                gen.set_preference([1.0, 0.0, 0.0])
            gen.generate_next_token()
        out.append([gen.get_sequence(r) for r in range(2)])
    assert out[0] == out[1]
    unswitched = fused.generate(PROMPTS, PREFS, _greedy(40))
    assert out[0][0] != unswitched[0].token_ids  # the switch changed row 0


def test_two_threads_share_the_session(pair):
    fused, _ = pair
    alone = [fused.generate([p], [q], _greedy(48))[0].token_ids for p, q in zip(PROMPTS, PREFS)]
    got = [None, None]

    def run(i):
        got[i] = fused.generate([PROMPTS[i]], [PREFS[i]], _greedy(48))[0].token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone
