"""Generator logic on a numpy fake backend: left padding, preferences per row, set_preference, stops, errors."""

import threading

import numpy as np
import pytest
from hoe.core.errors import InputError, PreferenceError
from hoe.core.routing import route
from hoe.runtime import GenerationConfig
from runtime_helpers import fake_model

PREFS = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9]]
PROMPTS = [[5, 9, 3, 7], [11, 4], [8, 1, 6, 12, 13, 3, 20]]
GREEDY = GenerationConfig(max_new_tokens=12, ignore_eos=True)


def _run(model, prompts, prefs, config=GREEDY):
    gen = model.generator(prefs, config)
    gen.append_tokens(prompts)
    while not gen.is_done():
        gen.generate_next_token()
    return gen


def test_batch_with_left_padding_equals_single_rows(tmp_path):
    model = fake_model(tmp_path)
    batch = _run(model, PROMPTS, PREFS)
    for r, (prompt, pref) in enumerate(zip(PROMPTS, PREFS)):
        single = _run(model, [prompt], pref)
        assert batch.get_sequence(r) == single.get_sequence(0)
    assert len({tuple(batch.get_sequence(r)) for r in range(3)}) == 3
    res = batch.results()
    np.testing.assert_allclose(res[1].router_mix, route(PREFS[1], model.router.anchors, 3), atol=1e-6)
    assert res[1].preference == pytest.approx(PREFS[1]) and res[2].prompt_token_ids == PROMPTS[2]
    assert res[0].finish_reason == "length" and len(res[0].token_ids) == 12


def test_preference_changes_output(tmp_path):
    model = fake_model(tmp_path)
    outs = {tuple(_run(model, [PROMPTS[0]], p).get_sequence(0)) for p in PREFS}
    assert len(outs) == 3


def test_set_preference_mid_stream_changes_following_tokens_only(tmp_path):
    model = fake_model(tmp_path)
    a, b, k = PREFS[0], PREFS[2], 5
    only_a = _run(model, [PROMPTS[0]], a).get_sequence(0)
    gen = model.generator(a, GREEDY)
    gen.append_tokens(PROMPTS[0])
    for _ in range(k):
        gen.generate_next_token()
    gen.set_preference(b)
    while not gen.is_done():
        gen.generate_next_token()
    switched = gen.get_sequence(0)
    assert switched[:k] == only_a[:k]
    assert switched[k:] != only_a[k:]
    assert gen.results()[0].preference == pytest.approx(b)


def test_set_preference_per_row(tmp_path):
    model = fake_model(tmp_path)
    gen = model.generator(PREFS[0], GREEDY)
    gen.append_tokens([PROMPTS[0], PROMPTS[0]])
    gen.generate_next_token()
    gen.set_preference(PREFS[2], rows=[1])
    while not gen.is_done():
        gen.generate_next_token()
    assert gen.get_sequence(0) == _run(model, [PROMPTS[0]], PREFS[0]).get_sequence(0)
    assert gen.get_sequence(1) != gen.get_sequence(0)
    with pytest.raises(InputError, match=r"\[0, 2\)"):
        gen.set_preference(PREFS[0], rows=[2])


def test_stop_ids_eos_and_lengths(tmp_path):
    model = fake_model(tmp_path)
    free = _run(model, [PROMPTS[0]], PREFS[0]).get_sequence(0)
    stop_at = free[3]
    gen = _run(model, [PROMPTS[0]], PREFS[0], GREEDY.with_(stop_token_ids=[stop_at]))
    first = free.index(stop_at)
    assert gen.get_sequence(0) == free[: first + 1] and gen.finish_reasons[0] == "stop"
    eos_model = fake_model(tmp_path, eos=(stop_at,))
    assert _run(eos_model, [PROMPTS[0]], PREFS[0], GenerationConfig(max_new_tokens=12)).get_sequence(0) == \
        free[: first + 1]
    assert _run(eos_model, [PROMPTS[0]], PREFS[0]).get_sequence(0) == free  # ignore_eos
    # the context (64) bounds the output: a 60-token prompt leaves room for 4 new tokens
    long_prompt = [3] * 60
    gen = _run(model, [long_prompt], PREFS[0])
    assert len(gen.get_sequence(0)) == 4 and gen.finish_reasons[0] == "length"
    mixed = _run(model, [long_prompt, PROMPTS[1]], PREFS[0])  # row 0 ends at the context, row 1 goes on
    assert mixed.get_sequence(0) == gen.get_sequence(0)
    assert mixed.get_sequence(1) == _run(model, [PROMPTS[1]], PREFS[0]).get_sequence(0)


def test_rows_that_stop_early_keep_others_going(tmp_path):
    model = fake_model(tmp_path)
    free = [_run(model, [p], PREFS[1]).get_sequence(0) for p in PROMPTS]
    stop_at = free[0][2]
    gen = _run(model, PROMPTS, PREFS[1], GREEDY.with_(stop_token_ids=[stop_at]))
    for r in range(3):
        expect = free[r][: free[r].index(stop_at) + 1] if stop_at in free[r] else free[r]
        assert gen.get_sequence(r) == expect


def test_prompt_longer_than_context(tmp_path):
    model = fake_model(tmp_path)
    with pytest.raises(InputError, match="64 tokens.*at most 63"):
        _run(model, [[1] * 64], PREFS[0])
    with pytest.raises(InputError, match=r"expected ids in \[0, 64\)"):
        _run(model, [[1, 64]], PREFS[0])
    with pytest.raises(InputError, match="empty"):
        _run(model, [[1], []], PREFS[0])


@pytest.mark.parametrize("pref,match", [([0.5, 0.5], "length 3"), ([0.5, -0.1, 0.6], ">= 0"),
                                        ([float("nan"), 0.5, 0.5], "finite"), ([0, 0, 0], "positive sum"),
                                        ("abc", "numbers"), (None, "required")])
def test_bad_preferences(tmp_path, pref, match):
    model = fake_model(tmp_path)
    with pytest.raises(PreferenceError, match=match):
        _run(model, [PROMPTS[0]], pref)
    gen = model.generator(PREFS[0], GREEDY)
    gen.append_tokens(PROMPTS[0])
    gen.generate_next_token()
    with pytest.raises(PreferenceError, match=match if pref is not None else "required"):
        gen.set_preference(pref)


def test_one_preference_per_row_count_must_match(tmp_path):
    model = fake_model(tmp_path)
    with pytest.raises(PreferenceError, match="2 preferences for 3 prompts"):
        _run(model, PROMPTS, PREFS[:2])


def test_generator_misuse(tmp_path):
    model = fake_model(tmp_path)
    gen = model.generator(PREFS[0], GREEDY.with_(max_new_tokens=1))
    with pytest.raises(InputError, match="append_tokens first"):
        gen.generate_next_token()
    gen.append_tokens([PROMPTS[0]])
    gen.generate_next_token()
    assert gen.is_done()
    with pytest.raises(InputError, match="finished"):
        gen.generate_next_token()
    with pytest.raises(InputError, match="after generation started"):
        gen.append_tokens([1])


def test_seeded_sampling_reproducible_through_generator(tmp_path):
    model = fake_model(tmp_path)
    cfg = GenerationConfig(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=5, ignore_eos=True)
    a = _run(model, PROMPTS, PREFS, cfg)
    b = _run(model, PROMPTS, PREFS, cfg)
    c = _run(model, PROMPTS, PREFS, cfg.with_(seed=6))
    seqs = lambda g: [g.get_sequence(r) for r in range(3)]  # noqa: E731
    assert seqs(a) == seqs(b) != seqs(c)


def test_streaming_and_stop_strings_with_tokenizer(tmp_path, tokenizer):
    model = fake_model(tmp_path, tokenizer=tokenizer, vocab=tokenizer.vocab_size, eos=(2,))
    cfg = GenerationConfig(max_new_tokens=20, ignore_eos=True)
    [full] = model.generate("Hello world", PREFS[1], cfg)
    assert full.text == tokenizer.decode(full.token_ids) and len(full.token_ids) == 20
    pieces = list(model.stream("Hello world", PREFS[1], cfg))
    assert "".join(pieces) == full.text and len(pieces) > 1
    stop = full.text[len(full.text) // 2: len(full.text) // 2 + 2]
    if stop.strip():
        [cut] = model.generate("Hello world", PREFS[1], cfg.with_(stop=[stop]))
        assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"
        assert "".join(model.stream("Hello world", PREFS[1], cfg.with_(stop=[stop]))) == cut.text


def test_threads_share_a_model(tmp_path):
    model = fake_model(tmp_path)
    expected = [_run(model, [PROMPTS[i % 3]], PREFS[i % 3]).get_sequence(0) for i in range(6)]
    got = [None] * 6

    def work(i):
        got[i] = _run(model, [PROMPTS[i % 3]], PREFS[i % 3]).get_sequence(0)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert got == expected


def test_plain_base_export_needs_no_preference(tmp_path):
    from hoe.runtime.model import Model
    from runtime_helpers import FakeBackend, fake_manifest

    manifest = fake_manifest(tmp_path, extra_anchor=False)
    manifest.data["hoe"] = {"enabled": False, "anchors": []}
    model = Model(manifest, FakeBackend(manifest, None).activate(), None)
    [res] = model.generate([PROMPTS[0]], None, GREEDY)
    assert len(res.token_ids) == 12 and res.router_mix == [] and res.preference == []
    with pytest.raises(PreferenceError, match="expected preference None"):
        model.generate([PROMPTS[0]], [1, 0, 0], GREEDY)
