"""Ray Serve scale-out on a local Ray instance: 2 replicas of the tiny export behind Ray's HTTP proxy, requests
spread over both, every output equal to the runtime's alone (the `ray` extra; skipped without it)."""

import asyncio
import socket

import pytest

ray = pytest.importorskip("ray", reason="the `ray` extra (ray[serve]) is not installed")

MODEL = "tiny-hoe"
PREFS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.5, 0.3]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_url(llama_folder):
    from hoe.serve.config import EngineConfig, ServeConfig
    from hoe.serve.ray_app import RayConfig, start
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 << 20)
    port = _free_port()
    try:
        config = ServeConfig(host="127.0.0.1", port=port, engine=EngineConfig(max_batch=4, max_queue=8))
        start(llama_folder, config, RayConfig(replicas=2, num_cpus=0.5, max_ongoing_requests=2), {"threads": 1})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_share_requests_and_answer_like_the_runtime(ray_url, llama_model):
    import openai

    async def run():
        client = openai.AsyncOpenAI(base_url=ray_url + "/v1", api_key="none", max_retries=3, timeout=120)
        try:
            jobs = [client.completions.create(model=MODEL, prompt=f"Rain {i}", max_tokens=24,
                                              extra_body={"preference": PREFS[i % 4], "ignore_eos": True})
                    for i in range(12)]
            return await asyncio.gather(*jobs)
        finally:
            await client.close()

    responses = asyncio.run(run())
    replicas = {r.model_extra["hoe"]["replica"] for r in responses}
    assert len(replicas) == 2, replicas  # max_ongoing_requests=2 per replica: 12 concurrent spread over both
    for i, r in enumerate(responses):
        cfg = llama_model.default_config(max_new_tokens=24, ignore_eos=True)
        assert r.choices[0].text == llama_model.generate([f"Rain {i}"], PREFS[i % 4], cfg)[0].text

    stream = openai.OpenAI(base_url=ray_url + "/v1", api_key="none").chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, stream=True,
        extra_body={"preference": PREFS[0], "ignore_eos": True})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    cfg = llama_model.default_config(max_new_tokens=8, ignore_eos=True)
    assert text == llama_model.generate([[{"role": "user", "content": "Hi"}]], PREFS[0], cfg, chat=True)[0].text
