"""`hoe serve` through the official openai client against a live server on 127.0.0.1: chat, completion,
streaming, the preference extension, and OpenAI-style errors for bad requests."""

import time

import httpx
import openai
import pytest

MODEL = "tiny-hoe"  # the exported folder's name
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about rain."}]
PREF = [0.2, 0.5, 0.3]


def _alone(model, prompt, pref, chat, **opts):
    cfg = model.default_config(**opts)
    return model.generate([prompt], pref, cfg, chat=chat)[0]


def test_models_lists_the_objectives(client, llama_model):
    [card] = client.models.list().data
    assert card.id == MODEL and card.model_extra["objectives"] == llama_model.objectives
    assert card.model_extra["context_length"] == llama_model.context_length
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_chat_with_preference_equals_generate_alone(client, llama_model):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                       extra_body={"preference": PREF, "ignore_eos": True})
    ref = _alone(llama_model, MESSAGES, PREF, True, max_new_tokens=24, ignore_eos=True)
    assert r.choices[0].message.content == ref.text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 24 and r.usage.prompt_tokens == len(ref.prompt_token_ids)
    ext = r.model_extra["hoe"]
    assert ext["preference"] == pytest.approx(ref.preference) and ext["router_mix"] == pytest.approx(ref.router_mix)
    other = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24,
                                           extra_body={"preference": [0, 0, 1], "ignore_eos": True})
    assert other.choices[0].message.content != r.choices[0].message.content  # the preference steers


def test_default_preference_is_uniform(client, llama_model):
    r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    ref = _alone(llama_model, MESSAGES, llama_model.router.uniform(), True, max_new_tokens=8)
    assert r.choices[0].message.content == ref.text
    assert r.model_extra["hoe"]["preference"] == pytest.approx([1 / 3] * 3)


def test_chat_stream_as_openai_clients_expect(client, llama_model):
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"preference": [1, 0, 0], "ignore_eos": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "length"
    assert finals[0].model_extra["hoe"]["router_mix"]
    assert chunks[-1].usage.completion_tokens == 20 and not chunks[-1].choices
    assert text == _alone(llama_model, MESSAGES, [1, 0, 0], True, max_new_tokens=20, ignore_eos=True).text


def test_completion_plain_and_streamed(client, llama_model):
    ref = _alone(llama_model, "Rain falls", PREF, False, max_new_tokens=16, temperature=0.8, seed=7,
                 stop=["e"])
    kw = dict(model=MODEL, prompt="Rain falls", max_tokens=16, temperature=0.8, seed=7, stop="e",
              extra_body={"preference": PREF})
    r = client.completions.create(**kw)
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == ref.finish_reason
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw))
    assert streamed == ref.text
    ids = client.completions.create(model=MODEL, prompt=[5, 9, 3, 7], max_tokens=6,
                                    extra_body={"preference": PREF, "ignore_eos": True})
    assert ids.choices[0].text == _alone(llama_model, [5, 9, 3, 7], PREF, False, max_new_tokens=6,
                                         ignore_eos=True).text


@pytest.mark.parametrize("kwargs, param, words", [
    (dict(extra_body={"preference": [1, 0]}), "preference", ["3 numbers", "[1, 0]"]),
    (dict(extra_body={"preference": [1, -1, 0]}), "preference", [">= 0", "-1"]),
    (dict(extra_body={"preference": "0.2,0.5,0.3"}), "preference", ["list of 3 numbers", "'0.2,0.5,0.3'"]),
    (dict(model="gpt-4o"), "model", ["gpt-4o", MODEL]),
    (dict(temperature=-1), "temperature", ["[0, 2]", "-1"]),
    (dict(top_p=0), "top_p", ["(0, 1]", "0"]),
    (dict(max_tokens=0), "max_tokens", [">= 1", "0"]),
    (dict(n=2), "n", ["1", "2"]),
    (dict(logprobs=True), "logprobs", ["not supported", "True"]),
    (dict(tools=[{"type": "function", "function": {"name": "f"}}]), "tools", ["not supported", "function"]),
    (dict(stop=["a", "b", "c", "d", "e"]), "stop", ["1 to 4"]),
    (dict(messages=[{"role": "user", "content": "x" * 300}]), "messages", ["context is 256 tokens", "at most 255"]),
])
def test_bad_requests_get_400_naming_expected_and_actual(client, kwargs, param, words):
    args = dict(model=MODEL, messages=MESSAGES, max_tokens=4) | kwargs
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    err = e.value.body
    assert e.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    for w in words:
        assert w in err["message"], err["message"]


def test_bad_json_nan_preference_and_unknown_route(live_server):
    body = b'{"messages": [{"role": "user", "content": "Hi"}], "preference": [NaN, 1, 0]}'  # what json.dumps writes
    r = httpx.post(live_server.url + "/v1/chat/completions", content=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "preference"
    assert "finite" in r.json()["error"]["message"] and "nan" in r.json()["error"]["message"]
    r = httpx.post(live_server.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]["message"]
    r = httpx.post(live_server.url + "/v1/chat/completions", json=[1, 2], timeout=30)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]
    r = httpx.get(live_server.url + "/v1/embeddings", timeout=30)
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]


def test_health_and_metrics(client, live_server):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=3)
    h = httpx.get(live_server.url + "/health", timeout=30).json()
    assert h["status"] == "ok" and h["max_batch"] == 4
    text = httpx.get(live_server.url + "/metrics", timeout=30).text
    for name in ("hoe_requests_total{", "hoe_generated_tokens_total", "hoe_queue_length", "hoe_batch_rows",
                 "hoe_time_to_first_token_seconds_bucket", "hoe_inter_token_latency_seconds_bucket",
                 "hoe_step_batch_rows_bucket"):
        assert name in text, name
    assert 'hoe_requests_total{endpoint="/v1/completions",status="200"}' in text


def _slowed(engine, seconds: float):
    """Make each decode step of `engine` take at least `seconds` (the tiny model would finish too soon)."""
    step = engine.batch.step

    def slow():
        time.sleep(seconds)
        return step()

    engine.batch.step = slow
    return step


def test_disconnect_mid_stream_frees_the_row(live_server):
    engine = live_server.engine
    original = _slowed(engine, 0.05)  # 256 context tokens now take > 10 s: only a cancel ends the row sooner
    body = {"model": MODEL, "prompt": "Rain", "max_tokens": 100_000, "stream": True, "ignore_eos": True}
    try:
        with httpx.Client(base_url=live_server.url, timeout=30) as http:
            with http.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines = r.iter_lines()
                assert next(lines).startswith("data: ")
                assert engine.load()["rows"] == 1
            start = time.monotonic()
            while engine.load()["rows"] and time.monotonic() - start < 5:
                time.sleep(0.02)
            assert engine.load()["rows"] == 0
            metrics = http.get("/metrics").text
        assert 'hoe_generations_finished_total{reason="cancelled"} 1.0' in metrics
    finally:
        engine.batch.step = original


def test_full_queue_gets_429_with_retry_after(llama_model):
    from hoe.serve.config import EngineConfig, ServeConfig
    from hoe.serve.server import BackgroundServer, build_app

    app, engine = build_app(llama_model, ServeConfig(engine=EngineConfig(max_batch=1, max_queue=0,
                                                                         retry_after_s=3)))
    body = {"prompt": "Rain", "max_tokens": 40, "stream": True, "ignore_eos": True}
    with BackgroundServer(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        _slowed(engine, 0.05)  # the one row stays busy for 2 s
        with http.stream("POST", "/v1/completions", json=body) as r:
            next(r.iter_lines())
            busy = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
            assert busy.status_code == 429 and busy.headers["retry-after"] == "3"
            assert busy.json()["error"]["code"] == "rate_limit_exceeded"
            assert "1 rows busy (max_batch 1)" in busy.json()["error"]["message"]
        c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=5)  # honours Retry-After
        assert c.completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices[0].text is not None
    assert not engine.running
