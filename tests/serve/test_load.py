"""A bounded load test: 16 concurrent official-openai clients x 4 requests each, mixed preferences, chat and
completion, streamed and not. Every output equals its serial greedy reference and nothing is lost."""

import asyncio
import re

import httpx
import openai

MODEL = "tiny-hoe"
PREFS = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8]]
CLIENTS, PER_CLIENT = 16, 4


def _jobs():
    jobs = []
    for c in range(CLIENTS):
        for k in range(PER_CLIENT):
            i = c * PER_CLIENT + k
            jobs.append({"client": c, "chat": i % 2 == 0, "stream": i % 3 == 0, "pref": PREFS[i % len(PREFS)],
                         "text": f"Question {i}: what is rain?"[: 10 + i % 17], "max_tokens": 6 + i % 13})
    return jobs


async def _run(client, job):
    extra = {"preference": job["pref"], "ignore_eos": True}
    if job["chat"]:
        kw = dict(model=MODEL, messages=[{"role": "user", "content": job["text"]}], max_tokens=job["max_tokens"],
                  extra_body=extra)
        if job["stream"]:
            return "".join([c.choices[0].delta.content or "" async for c in
                            await client.chat.completions.create(stream=True, **kw) if c.choices])
        return (await client.chat.completions.create(**kw)).choices[0].message.content
    kw = dict(model=MODEL, prompt=job["text"], max_tokens=job["max_tokens"], extra_body=extra)
    if job["stream"]:
        return "".join([c.choices[0].text async for c in await client.completions.create(stream=True, **kw)])
    return (await client.completions.create(**kw)).choices[0].text


async def _all(url, jobs):
    clients = [openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
               for _ in range(CLIENTS)]

    async def one_client(c):
        return [await _run(clients[c], j) for j in jobs if j["client"] == c]  # each client: 4 in sequence

    try:
        per_client = await asyncio.wait_for(asyncio.gather(*(one_client(c) for c in range(CLIENTS))), 300)
    finally:
        for c in clients:
            await c.close()
    return [out for outs in per_client for out in outs]


def test_sixteen_clients_mixed_preferences_equal_serial_greedy(live_server, llama_model):
    jobs = _jobs()
    outputs = asyncio.run(_all(live_server.url, jobs))
    assert len(outputs) == CLIENTS * PER_CLIENT
    for job, out in zip(jobs, outputs):
        cfg = llama_model.default_config(max_new_tokens=job["max_tokens"], ignore_eos=True)
        prompt = [{"role": "user", "content": job["text"]}] if job["chat"] else job["text"]
        ref = llama_model.generate([prompt], job["pref"], cfg, chat=job["chat"])[0]
        assert out == ref.text, job
    metrics = httpx.get(live_server.url + "/metrics", timeout=30).text
    shared = sum(float(v) for le, v in re.findall(r'hoe_step_batch_rows_bucket\{le="([^"]+)"\} (\S+)', metrics)
                 if le == "1.0")
    steps = float(re.search(r"hoe_step_batch_rows_count (\S+)", metrics).group(1))
    assert steps - shared > steps / 2, "most decode steps should hold several rows"  # batching happened
    assert live_server.engine.load()["rows"] == 0 and live_server.engine.load()["queued"] == 0
