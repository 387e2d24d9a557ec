"""`hoe bench serve`: the OpenAI server under concurrent streaming clients, and its overhead on one stream.

    server     `hoe serve` of OUT_DIR in this process (uvicorn thread, 127.0.0.1), ORT `threads`, spinning off
    sweep      `sweep_repeats` rounds, each over the concurrencies in a rotated order; per concurrency c:
               c clients, each sending `requests` streamed chat requests one after another, every client with
               its own preference; fixed lengths (ignore_eos, max_tokens = new_tokens)
    throughput completion tokens of all clients / wall time of the phase (aggregate decode throughput);
               median over the rounds (that round's latencies are reported)
    latency    TTFT = request sent -> first content chunk; ITL = gaps between content chunks of one request;
               p50/p99 over every request (TTFT) or every gap (ITL) of the phase
    overhead   round-robin `repeats` times: `hoe generate` alone (Model.generate, decode_ms_per_token) vs one
               streamed request through the server ((last chunk - first chunk) / (tokens - 1)); ratio of medians
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError

log = logging.getLogger(__name__)

# Targets of the issue (embedded model, CPU).
TARGETS = {"speedup_8_over_1": (">=", 4.0), "overhead_one_stream": ("<=", 1.10)}
PREFERENCES = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.2, 0.5, 0.3], [0.6, 0.2, 0.2], [0.1, 0.1, 0.8],
               [0.4, 0.4, 0.2], [0.2, 0.2, 0.6]]
PROMPTS = ["I am nervous about learning to draw. Any advice?", "How do I keep houseplants alive in winter?",
           "Explain what a preference vector is.", "Give me tips for a first job interview.",
           "What should I cook for friends tonight?", "How can I sleep better?",
           "Describe a rainy afternoon in a small town.", "Why is the sky blue?"]


@dataclass
class ServeBenchConfig(JsonConfig):
    """What `hoe bench serve` runs."""

    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])  # concurrent clients per phase
    requests: int = 2  # streamed requests per client per phase, one after another
    new_tokens: int = 64  # completion tokens per request (ignore_eos)
    repeats: int = 3  # round-robin repetitions of the one-stream overhead measurement
    sweep_repeats: int = 2  # repetitions of the concurrency sweep, each in a rotated order; medians reported
    threads: int = 1  # ORT intra-op threads
    max_batch: int = 8  # the server's --max-batch

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ConfigError(f"ServeBenchConfig.concurrency must be integers >= 1, got {self.concurrency}")
        for name in ("requests", "new_tokens", "repeats", "sweep_repeats", "threads", "max_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ServeBenchConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.new_tokens < 2:
            raise ConfigError(f"ServeBenchConfig.new_tokens must be >= 2 (ITL needs two tokens), got {self.new_tokens}")


def run(folder: str | Path, config: ServeBenchConfig) -> dict:
    import hoe.runtime as hr
    from hoe.serve.config import EngineConfig, ServeConfig
    from hoe.serve.server import BackgroundServer, build_app

    from .machine import machine_info
    from .timing import rotated

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request otherwise
    model = hr.load(folder, threads=config.threads, spinning=False)
    serve_config = ServeConfig(engine=EngineConfig(max_batch=config.max_batch, max_queue=4 * config.max_batch))
    app, _ = build_app(model, serve_config)
    with BackgroundServer(app) as server:
        name = Path(model.manifest.folder).name
        asyncio.run(_phase(server.url, name, 1, 1, 4))  # warm-up
        overhead = _overhead(model, server.url, name, config)
        runs = {c: [] for c in config.concurrency}
        for rep in range(config.sweep_repeats):  # round-robin: a noisy spell hits every concurrency alike
            for c in rotated(config.concurrency, rep):
                runs[c].append(asyncio.run(_phase(server.url, name, c, config.requests, config.new_tokens)))
        phases = {c: _median_phase(rs) for c, rs in runs.items()}
    model.close()
    one = phases.get(1)
    result = {"config": config.to_dict(), "folder": str(folder), "machine": machine_info(), "overhead": overhead,
              "phases": {str(c): p for c, p in phases.items()}}
    if one:
        result["speedup_over_one_stream"] = {str(c): p["tokens_per_s"] / one["tokens_per_s"]
                                             for c, p in phases.items()}
    return result


# ------------------------------------------------------------------------------------------ clients


async def _stream(http, name: str, prompt: str, pref, new_tokens: int) -> dict:
    """One streamed chat request -> send time, chunk arrival times, completion tokens."""
    body = {"model": name, "messages": [{"role": "user", "content": prompt}], "max_tokens": new_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "preference": pref, "ignore_eos": True}
    sent, times, tokens = time.perf_counter(), [], 0
    async with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            raise ConfigError(f"the server answered {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                times.append(time.perf_counter())
    return {"sent": sent, "times": times, "tokens": tokens}


async def _phase(url: str, name: str, clients: int, requests: int, new_tokens: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        async def client(c: int) -> list[dict]:
            pref, out = PREFERENCES[c % len(PREFERENCES)], []
            for k in range(requests):
                out.append(await _stream(http, name, PROMPTS[(c + k) % len(PROMPTS)], pref, new_tokens))
            return out

        start = time.perf_counter()
        per_client = await asyncio.gather(*(client(c) for c in range(clients)))
        wall = time.perf_counter() - start
    reqs = [r for rs in per_client for r in rs]
    ttft = [(r["times"][0] - r["sent"]) * 1e3 for r in reqs if r["times"]]
    itl = [g * 1e3 for r in reqs for g in np.diff(r["times"])]
    tokens = sum(r["tokens"] for r in reqs)
    return {"clients": clients, "requests": len(reqs), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_ms": _percentiles(ttft), "itl_ms": _percentiles(itl)}


def _median_phase(runs: list[dict]) -> dict:
    """The run of median throughput (its latencies as measured), with every run's tokens/s alongside."""
    ordered = sorted(runs, key=lambda r: r["tokens_per_s"])
    return dict(ordered[(len(ordered) - 1) // 2], tokens_per_s_runs=[r["tokens_per_s"] for r in runs])


def _overhead(model, url: str, name: str, config: ServeBenchConfig) -> dict:
    """`hoe generate` alone vs one stream through the server, interleaved."""
    pref, prompt = PREFERENCES[3], PROMPTS[0]
    gen_cfg = model.default_config(max_new_tokens=config.new_tokens, ignore_eos=True)
    direct, served = [], []
    for _ in range(config.repeats):
        [r] = model.generate([[{"role": "user", "content": prompt}]], pref, gen_cfg, chat=True)
        direct.append(r.timings["decode_ms_per_token"])
        one = asyncio.run(_phase_one(url, name, prompt, pref, config.new_tokens))
        served.append((one["times"][-1] - one["times"][0]) * 1e3 / max(1, one["tokens"] - 1))
    d, s = float(np.median(direct)), float(np.median(served))
    return {"generate_ms_per_token": d, "server_ms_per_token": s, "ratio": s / d, "generate_samples": direct,
            "server_samples": served}


async def _phase_one(url: str, name: str, prompt: str, pref, new_tokens: int) -> dict:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        return await _stream(http, name, prompt, pref, new_tokens)


def _percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"p50": float("nan"), "p99": float("nan"), "n": 0}
    arr = np.asarray(ms)
    return {"p50": float(np.percentile(arr, 50)), "p99": float(np.percentile(arr, 99)), "n": int(arr.size)}


# ------------------------------------------------------------------------------------------ report


def table(result: dict) -> str:
    from .report import markdown_table

    rows = []
    for c, p in result["phases"].items():
        rows.append([int(c), p["requests"], p["tokens"], p["tokens_per_s"],
                     result.get("speedup_over_one_stream", {}).get(c), p["ttft_ms"]["p50"], p["ttft_ms"]["p99"],
                     p["itl_ms"]["p50"], p["itl_ms"]["p99"]])
    o = result["overhead"]
    text = markdown_table(["streams", "requests", "tokens", "tokens/s", "× one stream", "TTFT p50 ms",
                           "TTFT p99 ms", "ITL p50 ms", "ITL p99 ms"], rows)
    text += (f"\n\none stream: server {o['server_ms_per_token']:.1f} ms/token vs `hoe generate` "
             f"{o['generate_ms_per_token']:.1f} ms/token -> {o['ratio']:.3f}× (target <= 1.10)")
    s8 = result.get("speedup_over_one_stream", {}).get("8")
    if s8 is not None:
        text += f"\n8 streams / 1 stream aggregate throughput: {s8:.2f}× (target >= 4)"
    return text


def plot(result: dict, path: str | Path) -> Path:
    """Aggregate tokens/s vs concurrency (left), TTFT and ITL p50/p99 vs concurrency (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cs = [int(c) for c in result["phases"]]
    ps = list(result["phases"].values())
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    a.plot(cs, [p["tokens_per_s"] for p in ps], "o-", color="#2a7ab9", label="hoe serve")
    if 1 in cs:
        one = ps[cs.index(1)]["tokens_per_s"]
        a.plot(cs, [one * c for c in cs], ":", color="#9aa5b1", label="linear in streams")
    a.set_xlabel("concurrent streams (mixed preferences)")
    a.set_ylabel("aggregate tokens/s")
    a.legend(fontsize=8)
    for key, style in (("ttft_ms", "s"), ("itl_ms", "o")):
        for q, ls in (("p50", "-"), ("p99", "--")):
            b.plot(cs, [p[key][q] for p in ps], marker=style, linestyle=ls, label=f"{key[:-3].upper()} {q}")
    b.set_yscale("log")
    b.set_xlabel("concurrent streams")
    b.set_ylabel("ms")
    b.legend(fontsize=8)
    fig.suptitle(f"{result['machine'].get('cpu', '?')} — {result['config']['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    from .report import save_figure

    return save_figure(fig, path)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="the OpenAI server under concurrent streams: throughput, TTFT, inter-token latency",
        description="Start `hoe serve` on OUT_DIR in this process and stream chat requests from 1..N concurrent "
                    "clients with different preferences: aggregate tokens/s vs concurrency, p50/p99 TTFT and "
                    "inter-token latency, and the server's overhead on one stream against `hoe generate`.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="exported HoE folder")
    p.add_argument("--concurrency", default="1,2,4,8", help="comma-separated client counts (default 1,2,4,8)")
    p.add_argument("--requests", type=int, default=2, help="streamed requests per client per phase (default 2)")
    p.add_argument("--new-tokens", type=int, default=64, help="completion tokens per request (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions of the one-stream overhead (default 3)")
    p.add_argument("--sweep-repeats", type=int, default=2,
                   help="repetitions of the concurrency sweep, rotated order, median reported (default 2)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op threads (default 1)")
    p.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (default 8)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG plot here (needs matplotlib)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from .report import write_json

    try:
        concurrency = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError as e:
        raise ConfigError(f"--concurrency must be comma-separated integers like 1,2,4,8, "
                          f"got {args.concurrency!r}") from e
    config = ServeBenchConfig(concurrency=concurrency, requests=args.requests, new_tokens=args.new_tokens,
                              repeats=args.repeats, sweep_repeats=args.sweep_repeats, threads=args.threads,
                              max_batch=args.max_batch)
    result = run(args.out_dir, config)
    print(table(result))
    if args.json:
        write_json(args.json, result)
    if args.plot:
        plot(result, args.plot)
    return 0
