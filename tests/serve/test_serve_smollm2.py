"""Continuous batching on the real SmolLM2-135M export (random rank-16 experts, validated export shared with
the other slow tests): requests of four preferences joining a running batch give `hoe generate`'s tokens."""

import threading

import hoe.runtime as hr
import pytest
from hoe.serve.config import EngineConfig
from hoe.serve.engine import Engine
from hoe.serve.rows import Request

pytestmark = pytest.mark.slow

PREFS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.5, 0.3]]
MESSAGES = ["What is the capital of France?", "Write a haiku about rain.", "Give me one tip for sleeping well.",
            "Why is the sky blue?"]


def test_smollm2_rows_joining_mid_flight_equal_generate_alone(smollm2_export):
    with hr.load(smollm2_export[0], threads=2) as model:
        cfg = model.default_config(max_new_tokens=12, ignore_eos=True)
        prompts = [model.encode([{"role": "user", "content": m}], chat=True) for m in MESSAGES]
        engine = Engine(model, EngineConfig(max_batch=4)).start()
        done = [threading.Event() for _ in prompts]
        results = [None] * len(prompts)

        def on_event(i):
            def f(ev):
                if ev.kind != "token":
                    results[i] = ev.result if ev.kind == "done" else ev.error
                    done[i].set()
            return f

        try:
            for i, (ids, pref) in enumerate(zip(prompts, PREFS)):
                engine.submit(Request(ids, cfg, pref), on_event(i))
                if i == 1:
                    while engine.steps < 3:  # the last two join a batch that is already decoding
                        threading.Event().wait(0.01)
            assert all(d.wait(600) for d in done)
        finally:
            engine.stop()
        for ids, pref, got in zip(prompts, PREFS, results):
            ref = model.generate([ids], pref, cfg)[0]
            assert got.token_ids == ref.token_ids and got.text == ref.text
        assert len({tuple(r.token_ids) for r in results}) > 1
