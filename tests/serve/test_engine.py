"""The continuous-batching engine without HTTP: rows join and leave a running batch, each with its own
preference and sampling, and every row gives what the runtime gives for the same request alone."""

import threading

import hoe.runtime as hr
import pytest
from hoe.core.errors import PreferenceError
from hoe.serve.config import EngineConfig
from hoe.serve.engine import Engine, QueueFull
from hoe.serve.rows import Request

PREFS = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.1, 0.9], [0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]
PROMPTS = [[5, 9, 3, 7, 22, 40], [11, 4], [8, 14, 6, 12, 13, 3, 20, 50, 61], [30, 31], [44, 45, 46, 47]]


class Collector:
    """on_event for the engine: pieces and the final result of one request."""

    def __init__(self):
        self.pieces, self.result, self.error = [], None, None
        self.finished = threading.Event()

    def __call__(self, event):
        if event.kind == "token":
            self.pieces.append(event.piece)
        else:
            self.result, self.error = event.result, event.error
            self.finished.set()


def _alone(model, prompt, pref, config):
    return model.generate([prompt], pref, config)[0]


@pytest.fixture(params=["llama", "qwen2", "mistral"])
def model(request, serve_export):
    with hr.load(serve_export(request.param), threads=1) as m:
        yield m


def test_rows_joining_a_running_batch_equal_each_request_alone(model):
    """Requests of different lengths and preferences arrive while others decode; greedy rows equal
    model.generate alone (the tokens, the text, the router_mix)."""
    configs = [hr.GenerationConfig(max_new_tokens=n, ignore_eos=True) for n in (20, 7, 26, 3, 15)]
    engine = Engine(model, EngineConfig(max_batch=3)).start()
    try:
        collectors = []
        for i, (prompt, pref, cfg) in enumerate(zip(PROMPTS, PREFS, configs)):
            c = Collector()
            engine.submit(Request(prompt, cfg, pref, id=str(i)), c)
            collectors.append(c)
            if i == 1:  # let the first two run a few steps before the others arrive
                while engine.steps < 4:
                    threading.Event().wait(0.005)
        for c in collectors:
            assert c.finished.wait(60) and c.error is None, c.error
    finally:
        engine.stop()
    assert engine.steps < sum(c.max_new_tokens for c in configs) - 20  # rows really shared decode steps
    for c, prompt, pref, cfg in zip(collectors, PROMPTS, PREFS, configs):
        ref = _alone(model, prompt, pref, cfg)
        assert c.result.token_ids == ref.token_ids
        assert c.result.text == ref.text == "".join(c.pieces)
        assert c.result.router_mix == pytest.approx(ref.router_mix)
        assert c.result.finish_reason == "length"
    assert len({tuple(c.result.token_ids[:3]) for c in collectors}) > 1


def test_sampling_rows_with_seeds_equal_alone(model):
    cfgs = [hr.GenerationConfig(max_new_tokens=12, temperature=0.9, top_p=0.8, seed=s, ignore_eos=True)
            for s in (1, 2, 3)]
    engine = Engine(model, EngineConfig(max_batch=4)).start()
    try:
        cs = [Collector() for _ in cfgs]
        for c, cfg, prompt, pref in zip(cs, cfgs, PROMPTS, PREFS):
            engine.submit(Request(prompt, cfg, pref), c)
        assert all(c.finished.wait(60) for c in cs)
    finally:
        engine.stop()
    for c, cfg, prompt, pref in zip(cs, cfgs, PROMPTS, PREFS):
        assert c.result.token_ids == _alone(model, prompt, pref, cfg).token_ids


def test_bad_request_fails_alone_and_cancel_frees_the_row(llama_model):
    engine = Engine(llama_model, EngineConfig(max_batch=2, max_queue=0)).start()
    long = hr.GenerationConfig(max_new_tokens=10_000, ignore_eos=True)
    try:
        bad = Collector()
        engine.submit(Request(PROMPTS[0], long, [1.0, -1.0, 0.0]), bad)
        assert bad.finished.wait(30) and isinstance(bad.error, PreferenceError)
        first, second = Collector(), Collector()
        h1 = engine.submit(Request(PROMPTS[0], long, PREFS[0]), first)
        engine.submit(Request(PROMPTS[1], long, PREFS[1]), second)
        while engine.load()["rows"] < 2:
            threading.Event().wait(0.005)
        with pytest.raises(QueueFull, match="max_batch 2"):
            engine.submit(Request(PROMPTS[2], long, PREFS[2]), Collector())
        h1.cancel()
        third = Collector()
        deadline = threading.Event()
        while True:  # the cancelled row is freed at the next step boundary, then a new request fits
            try:
                engine.submit(Request(PROMPTS[2], hr.GenerationConfig(max_new_tokens=5), PREFS[2]), third)
                break
            except QueueFull:
                assert not deadline.wait(0.01) and engine.steps < 10_000
        assert third.finished.wait(30) and third.error is None
        assert not first.finished.is_set()  # a cancelled request gets no more events
    finally:
        engine.stop()
    assert isinstance(second.error, Exception)  # stopped while running: told so


def test_a_failing_decode_step_fails_its_rows_and_the_engine_goes_on(llama_model):
    engine = Engine(llama_model, EngineConfig(max_batch=2)).start()
    step, calls = engine.batch.step, []

    def broken():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("device lost")
        return step()

    engine.batch.step = broken
    try:
        cs = [Collector(), Collector()]
        for c, prompt, pref in zip(cs, PROMPTS, PREFS):
            engine.submit(Request(prompt, hr.GenerationConfig(max_new_tokens=8, ignore_eos=True), pref), c)
        assert all(c.finished.wait(30) for c in cs)
        assert any(isinstance(c.error, RuntimeError) for c in cs)
        after = Collector()
        engine.submit(Request(PROMPTS[2], hr.GenerationConfig(max_new_tokens=5, ignore_eos=True), PREFS[2]), after)
        assert after.finished.wait(30) and after.error is None and len(after.result.token_ids) == 5
        assert engine.load()["rows"] == 0
    finally:
        engine.stop()


def test_backend_without_row_kv_serves_one_row_at_a_time(tmp_path):
    from hoe.core.errors import ConfigError
    from runtime_helpers import fake_model

    model = fake_model(tmp_path)
    with pytest.raises(ConfigError, match="lacks; use max_batch 1"):
        Engine(model, EngineConfig(max_batch=2))
    engine = Engine(model, EngineConfig(max_batch=1)).start()
    try:
        cs = [Collector() for _ in range(3)]
        for c, prompt, pref in zip(cs, PROMPTS, PREFS):
            engine.submit(Request(prompt, hr.GenerationConfig(max_new_tokens=6, ignore_eos=True), pref), c)
        assert all(c.finished.wait(30) for c in cs)
    finally:
        engine.stop()
    for c, prompt, pref in zip(cs, PROMPTS, PREFS):
        assert c.result.token_ids == _alone(model, prompt, pref, hr.GenerationConfig(max_new_tokens=6,
                                                                                   ignore_eos=True)).token_ids


def test_stop_strings_and_eos_end_rows(llama_model):
    ref = _alone(llama_model, PROMPTS[2], PREFS[2], hr.GenerationConfig(max_new_tokens=30, ignore_eos=True))
    stop = ref.text[5:7]
    cfg = hr.GenerationConfig(max_new_tokens=30, stop=[stop], ignore_eos=True)
    engine = Engine(llama_model).start()
    try:
        c = Collector()
        engine.submit(Request(PROMPTS[2], cfg, PREFS[2]), c)
        assert c.finished.wait(30)
    finally:
        engine.stop()
    want = _alone(llama_model, PROMPTS[2], PREFS[2], cfg)
    assert c.result.text == want.text == "".join(c.pieces) and stop not in c.result.text
    assert c.result.finish_reason == want.finish_reason == "stop"


