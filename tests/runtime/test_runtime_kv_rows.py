"""The row-level K/V API for continuous batching: Backend.read_kv / state_from_kv (onnxruntime) and the numpy
row surgery of hoe.runtime.kv_rows (select, left-pad + concatenate, trim)."""

import hoe.runtime as hr
import numpy as np
import pytest
from hoe.core.errors import BackendError, InputError
from hoe.runtime import kv_rows
from runtime_helpers import fake_model

PROMPTS = [[5, 9, 3, 7, 22, 40], [11, 4, 8]]
MIX = np.array([[0.7, 0.1, 0.1, 0.1]], dtype=np.float32)


def _prefill(backend, prompt, mix=MIX):
    state = backend.new_state(1)
    t = len(prompt)
    logits = backend.step(state, np.array([prompt]), np.ones((1, t), dtype=np.int64), np.arange(t)[None], mix)
    return state, logits


def _cache(b, p, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(b, 2, p, 3)).astype(np.float32) for _ in range(4)]


def test_select_concat_trim_move_rows_and_columns():
    a, b = _cache(3, 5, 0), _cache(1, 2, 1)
    sel = kv_rows.select_rows(a, [2, 0])
    assert np.array_equal(sel[1][0], a[1][2]) and np.array_equal(sel[1][1], a[1][0])
    both = kv_rows.concat_rows([sel, b])
    assert both[0].shape == (3, 2, 5, 3)
    assert np.array_equal(both[3][2, :, 3:], b[3][0]) and not both[3][2, :, :3].any()  # left-padded with zeros
    assert np.array_equal(both[3][:2], sel[3])
    trimmed = kv_rows.trim_left(both, 3)
    assert trimmed[0].shape == (3, 2, 2, 3) and np.array_equal(trimmed[0][2], b[0][0])
    with pytest.raises(InputError, match=r"rows must be in \[0, 3\), got \[3\]"):
        kv_rows.select_rows(a, [3])
    with pytest.raises(InputError, match=r"n must be in \[0, 5\], got 6"):
        kv_rows.trim_left(a, 6)
    with pytest.raises(InputError, match="heads/head_dim/dtype"):
        kv_rows.concat_rows([a, [x.astype(np.float16) for x in b]])


@pytest.fixture(scope="module")
def ort_model(llama_export):
    with hr.load(llama_export.folder, threads=1) as m:
        yield m


def test_read_kv_then_state_from_kv_continues_exactly(ort_model):
    backend = ort_model.backend
    state, _ = _prefill(backend, PROMPTS[0])
    kv = backend.read_kv(state)
    m = ort_model.manifest
    assert len(kv) == 2 * m.num_layers and kv[0].shape[0] == 1 and kv[0].shape[2] == len(PROMPTS[0])
    copy = backend.state_from_kv(kv)
    assert copy.batch == 1 and copy.past_length == len(PROMPTS[0])
    t = len(PROMPTS[0])
    feed = (np.array([[17]]), np.ones((1, t + 1), dtype=np.int64), np.array([[t]]), MIX)
    assert np.array_equal(backend.step(state, *feed), backend.step(copy, *feed))


def test_rows_merged_with_left_padding_decode_as_alone(ort_model):
    """Two rows prefilled alone, merged (the shorter left-padded), decoded together: each row's logits equal
    its own batch-1 decode; then one row leaves and the columns only it used are trimmed."""
    backend = ort_model.backend
    mixes = [MIX, np.array([[0.1, 0.1, 0.1, 0.7]], dtype=np.float32)]
    alone = [_prefill(backend, p, mx)[0] for p, mx in zip(PROMPTS, mixes)]
    parts = [_prefill(backend, p, mx)[0] for p, mx in zip(PROMPTS, mixes)]
    merged = backend.state_from_kv(kv_rows.concat_rows([backend.read_kv(s) for s in parts]))
    lengths, width = np.array([len(p) for p in PROMPTS]), max(len(p) for p in PROMPTS)
    for step, tok in enumerate([3, 30, 12]):
        w = width + step
        mask = (np.arange(w + 1)[None] >= (w - lengths - step)[:, None]).astype(np.int64)
        pos = (lengths + step)[:, None]
        batched = backend.step(merged, np.array([[tok], [tok]]), mask, pos, np.concatenate(mixes))
        for r in range(2):
            n = lengths[r] + step
            single = backend.step(alone[r], np.array([[tok]]), np.ones((1, n + 1), dtype=np.int64),
                                  np.array([[n]]), mixes[r])
            np.testing.assert_allclose(batched[r], single[0], rtol=1e-4, atol=1e-5)
            assert batched[r].argmax() == single[0].argmax()
    kv = kv_rows.select_rows(backend.read_kv(merged), [1])
    kv = kv_rows.trim_left(kv, width - len(PROMPTS[1]))
    assert kv[0].shape[2] == len(PROMPTS[1]) + 3


def test_backends_without_row_access_say_so(tmp_path, ort_model):
    model = fake_model(tmp_path)
    assert not model.backend.supports_row_kv and ort_model.backend.supports_row_kv
    with pytest.raises(BackendError, match="no row-level KV access"):
        model.backend.read_kv(model.backend.new_state(1))
