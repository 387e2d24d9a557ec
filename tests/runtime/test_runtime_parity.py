"""The onnxruntime runtime against the PyTorch reference (hoe.core) on tiny Llama / Qwen2 / Mistral HoE models.

Experts have B != 0 and routers are random and non-zero, so a wrong mix, a wrong mask or a wrong
position shows up in the tokens.
"""

import threading

import hoe.runtime as hr
import numpy as np
import pytest
import torch
from hoe.core.generate import generate as reference_generate
from hoe.core.generate import positions_from_mask
from hoe.core.routing import route_batch

PREFS = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]]
PROMPTS = [[5, 9, 3, 7, 22, 40], [11, 4], [8, 14, 6, 12, 13, 3, 20, 50, 61]]
N_NEW = 32
GREEDY = hr.GenerationConfig(max_new_tokens=N_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def model(tiny_export):
    with hr.load(tiny_export.folder, threads=1) as m:
        yield m


def _left_pad(prompts, pad=0):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    return ids, mask


def _reference(exported, model, prompts, prefs, n=N_NEW):
    ids, mask = _left_pad(prompts)
    mix = torch.from_numpy(route_batch(prefs, model.router.anchors, model.router.n_route))
    return reference_generate(exported.reference, ids, mask, mix, n).tolist()


@pytest.mark.parametrize("pref", PREFS)
def test_greedy_batch1_equals_pytorch(tiny_export, model, pref):
    [res] = model.generate([PROMPTS[0]], pref, GREEDY)
    assert len(res.token_ids) == N_NEW
    assert res.token_ids == _reference(tiny_export, model, [PROMPTS[0]], [pref])[0]


def test_greedy_batch3_per_row_preferences_equals_pytorch(tiny_export, model):
    results = model.generate(PROMPTS, PREFS, GREEDY)
    expected = _reference(tiny_export, model, PROMPTS, PREFS)
    assert [r.token_ids for r in results] == expected
    assert len({tuple(t) for t in expected}) == 3
    # each row alone gives the same tokens as inside the left-padded batch
    for r in range(3):
        assert model.generate([PROMPTS[r]], PREFS[r], GREEDY)[0].token_ids == expected[r]


def test_preferences_change_the_tokens(model):
    outs = {tuple(model.generate([PROMPTS[2]], p, GREEDY)[0].token_ids) for p in PREFS}
    assert len(outs) == 3


def test_infer_matches_pytorch_per_output(tiny_export, model):
    """Polygraphy-style: every graph output of one forward with a past, max abs diff per output."""
    ids, mask = _left_pad(PROMPTS)
    mix = route_batch(PREFS, model.router.anchors, model.router.n_route)
    ref = tiny_export.reference
    with torch.no_grad():
        pos = positions_from_mask(mask, ids.shape[1])
        _, cache = ref(ids, torch.from_numpy(mix), attention_mask=mask, position_ids=pos)
        new_ids = torch.tensor([[3, 4], [5, 6], [7, 8]])
        mask2 = torch.cat([mask, torch.ones(3, 2, dtype=torch.long)], 1)
        pos2 = positions_from_mask(mask2, 2)
        feed = {"input_ids": new_ids.numpy(), "attention_mask": mask2.numpy(), "position_ids": pos2.numpy(),
                "router_mix": mix}
        m = model.manifest
        for i, layer in enumerate(cache.layers):
            pk, pv, _, _ = m.kv_names(i)
            feed[pk], feed[pv] = layer.keys.numpy().copy(), layer.values.numpy().copy()
        logits, cache2 = ref(new_ids, torch.from_numpy(mix), attention_mask=mask2, position_ids=pos2, cache=cache)
    out = model.backend.infer(feed)
    diffs = {"logits": float(np.abs(out["logits"] - logits.numpy()).max())}
    for i, layer in enumerate(cache2.layers):
        _, _, ok, ov = m.kv_names(i)
        real = mask2.numpy().astype(bool)[:, None, :, None]  # K/V at padding positions may differ (harmless)
        diffs[ok] = float(np.abs(np.where(real, out[ok] - layer.keys.numpy(), 0)).max())
        diffs[ov] = float(np.abs(np.where(real, out[ov] - layer.values.numpy(), 0)).max())
    assert max(diffs.values()) < 1e-4, diffs


def test_set_preference_mid_stream_equals_reference_switch(tiny_export, model):
    """Tokens before the switch equal a run with the old preference; after it, a reference that switches
    router_mix at the same forward pass (and differ from never switching)."""
    a, b, k = PREFS[0], PREFS[2], 10
    gen = model.generator(a, GREEDY)
    gen.append_tokens(PROMPTS[1])
    for _ in range(k):
        gen.generate_next_token()
    gen.set_preference(b)
    while not gen.is_done():
        gen.generate_next_token()
    got = gen.get_sequence(0)
    only_a = _reference(tiny_export, model, [PROMPTS[1]], [a])[0]
    assert got[:k] == only_a[:k] and got[k:] != only_a[k:]
    # reference: forward passes 0..k-1 with a, then b
    ref = tiny_export.reference
    mix_a, mix_b = (torch.from_numpy(route_batch([p], model.router.anchors, model.router.n_route)) for p in (a, b))
    ids, mask = _left_pad([PROMPTS[1]])
    tokens = []
    with torch.no_grad():
        logits, cache = ref(ids, mix_a, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1]))
        for step in range(N_NEW):
            tok = logits[:, -1].argmax(-1)
            tokens.append(int(tok))
            mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], 1)
            mix = mix_a if step + 1 < k else mix_b
            logits, cache = ref(tok[:, None], mix, attention_mask=mask, position_ids=positions_from_mask(mask, 1),
                                cache=cache)
    assert got == tokens


def test_threads_with_different_preferences_equal_sequential(model):
    jobs = [(PROMPTS[i % 3], PREFS[(i + 1) % 3]) for i in range(6)]
    expected = [model.generate([p], w, GREEDY)[0].token_ids for p, w in jobs]
    got = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait()
        got[i] = model.generate([jobs[i][0]], jobs[i][1], GREEDY)[0].token_ids

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


def test_torch_backend_matches_ort(tiny_export, model):
    with hr.load(tiny_export.folder, backend="torch", threads=1) as tm:
        assert tm.describe()["backend"] == "torch"
        results = tm.generate(PROMPTS, PREFS, GREEDY.with_(max_new_tokens=12))
    assert [r.token_ids for r in results] == [r.token_ids for r in model.generate(PROMPTS, PREFS,
                                                                                   GREEDY.with_(max_new_tokens=12))]


def test_text_stream_and_chat(model):
    cfg = hr.GenerationConfig(max_new_tokens=20, ignore_eos=True)
    [res] = model.generate("Hello world", PREFS[1], cfg)
    assert res.text == model.tokenizer.decode(res.token_ids) and len(res.token_ids) == 20
    assert "".join(model.stream("Hello world", PREFS[1], cfg)) == res.text
    reply = model.chat([{"role": "user", "content": "Hi"}], PREFS[1], cfg)
    expected_ids = model.tokenizer.encode("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
                                          add_special_tokens=False)
    assert reply.prompt_token_ids == expected_ids
    assert reply.token_ids == model.generate([expected_ids], PREFS[1], cfg)[0].token_ids
