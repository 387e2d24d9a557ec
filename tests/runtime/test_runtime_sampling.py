import numpy as np
import pytest
from hoe.core.errors import ConfigError
from hoe.runtime import GenerationConfig
from hoe.runtime.sampling import Sampler, apply_repetition_penalty, nucleus, softmax


def _reference_nucleus(probs, top_k, top_p):
    """Straightforward full-sort version (HF semantics) to compare against."""
    order = np.argsort(-probs, kind="stable")
    p = probs[order]
    if top_k > 0:
        order, p = order[:top_k], p[:top_k]
    if top_p < 1:
        cum = np.cumsum(p) / p.sum()
        keep = int(np.searchsorted(cum, top_p)) + 1
        order, p = order[:keep], p[:keep]
    return set(order.tolist())


@pytest.mark.parametrize("top_k,top_p,scale", [(0, 0.9, 1.0), (0, 0.5, 5.0), (10, 1.0, 1.0), (40, 0.8, 2.0),
                                               (0, 0.99, 0.01), (500, 0.95, 0.01), (0, 0.3, 0.0)])
def test_nucleus_matches_full_sort(top_k, top_p, scale):
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=2000) * scale)  # scale 0.01 -> nearly flat: nucleus wider than 256 candidates
    ids, p = nucleus(probs, top_k, top_p)
    assert set(ids.tolist()) == _reference_nucleus(probs, top_k, top_p)
    assert np.all(np.diff(p) <= 0)


def test_greedy_is_argmax_and_penalty_follows_hf_rule():
    logits = np.array([[1.0, 3.0, -2.0, 2.9]], dtype=np.float32)
    assert Sampler(GenerationConfig(), 1, 4)(logits).tolist() == [1]
    seen = np.array([[False, True, True, False]])
    penalised = logits.copy()
    apply_repetition_penalty(penalised, seen, 1.5)
    np.testing.assert_allclose(penalised, [[1.0, 2.0, -3.0, 2.9]])  # >0 divided, <0 multiplied
    s = Sampler(GenerationConfig(repetition_penalty=1.5), 1, 4)
    s.observe(np.array([[1]]))
    assert s(logits).tolist() == [3]  # token 1 was seen: 3.0/1.5 = 2.0 < 2.9
    assert logits[0, 1] == 3.0  # caller's logits untouched


def test_seeded_sampling_is_reproducible_and_respects_top_k():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 100)).astype(np.float32)
    cfg = GenerationConfig(temperature=1.0, top_k=5, seed=123)
    def draws(c):
        s = Sampler(c, 2, 100)
        return [s(logits).tolist() for _ in range(20)]

    assert draws(cfg) == draws(cfg)
    assert draws(cfg) != draws(cfg.with_(seed=7))
    s = Sampler(cfg, 2, 100)
    many = np.array([s(logits) for _ in range(300)])  # [300, 2]
    for row in range(2):
        allowed = set(np.argsort(-logits[row])[:5].tolist())
        assert set(many[:, row].tolist()) <= allowed
        assert len(set(many[:, row].tolist())) > 1  # really sampling


def test_sampling_frequencies_follow_temperature():
    logits = np.log(np.array([[0.5, 0.3, 0.2]], dtype=np.float32))
    s = Sampler(GenerationConfig(temperature=1.0, seed=0), 1, 3)
    counts = np.bincount([int(s(logits)[0]) for _ in range(3000)], minlength=3) / 3000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.2], atol=0.04)
    cold = Sampler(GenerationConfig(temperature=0.2, seed=0), 1, 3)
    assert np.mean([int(cold(logits)[0]) == 0 for _ in range(500)]) > 0.9


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0),
                                         ("top_p", 1.5), ("top_k", -1), ("repetition_penalty", 0.0),
                                         ("temperature", float("nan")), ("stop", [""]), ("stop_token_ids", [-1])])
def test_generation_config_rejects_bad_values(field, value):
    with pytest.raises(ConfigError, match=field):
        GenerationConfig(**{field: value})


def test_generation_config_json_round_trip(tmp_path):
    cfg = GenerationConfig(max_new_tokens=7, temperature=0.7, top_p=0.9, seed=3, stop=["\n\n"])
    cfg.save(tmp_path / "g.json")
    assert GenerationConfig.load(tmp_path / "g.json") == cfg
    merged = GenerationConfig.from_defaults({"max_new_tokens": 128, "temperature": 0.0, "unknown_key": 1},
                                            temperature=0.5, top_k=None)
    assert (merged.max_new_tokens, merged.temperature, merged.top_k) == (128, 0.5, 0)
