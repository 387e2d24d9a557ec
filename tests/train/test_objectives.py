"""The offline scorers on fixed texts: ranges, normalisation and orderings."""

import numpy as np
import pytest
from hoe.core.errors import ConfigError
from hoe.core.objectives import Conciseness, make_objective, make_objectives, score_all


def test_conciseness_is_linear_in_words_and_clipped():
    c = Conciseness(max_words=40)
    got = c.score(["q"] * 4, ["", "one two three four", " ".join(["w"] * 40), " ".join(["w"] * 90)])
    assert got.tolist() == [1.0, 0.9, 0.0, 0.0]


def test_positivity_is_vader_compound_rescaled():
    pos = make_objective("positive")
    got = pos.score(["q"] * 3, ["I love this wonderful day!", "The report is on the table.", "I hate this awful mess."])
    assert got[0] == pytest.approx((0.871 + 1) / 2, abs=1e-3)
    assert got[1] == pytest.approx(0.5)
    assert got[0] > got[1] > got[2] >= 0.0


def test_relevance_prefers_on_topic_answers():
    rel = make_objective("helpful")
    prompt = "How do plants make food from sunlight?"
    answers = ["Plants use photosynthesis to turn sunlight, water and carbon dioxide into sugar.",
               "My favourite football team won the match yesterday.", ""]
    got = rel.score([prompt] * 3, answers)
    assert got[0] > 0.4 and got[0] > got[1] + 0.2
    assert got[2] == 0.0
    assert np.all((got >= 0) & (got <= 1))
    vec = rel.embed(["a sentence"])
    assert vec.shape == (1, 384) and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-5)


def test_score_all_shape_and_errors():
    objs = make_objectives(["concise", "char:a"])
    got = score_all(objs, ["p", "p"], ["a b", "aaaa"])
    assert got.shape == (2, 2) and got[1, 1] == 1.0 and got[0, 1] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="unknown objective"):
        make_objective("funny")
    with pytest.raises(ConfigError, match="2 prompts but 1 answers"):
        objs[0].score(["p", "q"], ["a"])
