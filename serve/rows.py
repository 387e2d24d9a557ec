"""One request's decode state inside a running batch: its preference, sampler, text and stop rules.

A Row is what a batch-1 hoe.runtime Generator keeps per row, minus the K/V cache (the batch owns
that): the same Sampler, TextTracker, stop ids and length rules, so a greedy row gives the tokens
`hoe generate` gives for the same request alone.

    row = Row(model, request)                 # validates the prompt and the preference
    piece = row.accept(logits_row)            # [V] -> sample, record, text piece to stream ('' maybe)
    row.pending, row.position, row.cached     # next input token, its position, tokens in the cache
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from hoe.runtime.config import GenerationConfig
from hoe.runtime.generator import check_prompt, finish_reason, stop_ids
from hoe.runtime.result import Result
from hoe.runtime.sampling import Sampler
from hoe.runtime.text import TextTracker


@dataclass
class Request:
    """What the engine needs to run one generation."""

    prompt_ids: list[int]
    config: GenerationConfig
    preference: list[float] | None = None  # None -> the model's default (uniform when it has objectives)
    id: str = ""
    arrived: float = field(default_factory=time.perf_counter)


class Row:
    def __init__(self, model, request: Request) -> None:
        check_prompt(request.prompt_ids, model.manifest.context_length, model.manifest.vocab_size)
        router, m = model.router, model.manifest
        pref = request.preference
        if pref is None and router.enabled:
            pref = router.uniform()
        self.request = request
        rows, mix = router.route(pref, 1)
        self.preference, self.mix = rows[0], mix[0]  # [m] normalised, [K] float32
        cfg = self.config = request.config
        self.stop_ids = stop_ids(model, cfg)
        self.sampler = Sampler(cfg, 1, m.vocab_size)
        self.sampler.observe(np.asarray([request.prompt_ids]))
        self.tracker = TextTracker(model.tokenizer, cfg.stop) if model.tokenizer else None
        self.context = m.context_length
        self.tokens: list[int] = []
        self.real = len(request.prompt_ids)  # tokens of this row so far, the pending one excluded
        self.cached = 0  # of them, in the K/V cache
        self.pending = -1  # sampled token not yet run through the model
        self.finish_reason: str | None = None
        self.first_token_at = self.previous_token_at = self.last_token_at = None  # perf_counter seconds

    @property
    def position(self) -> int:
        """Position id of the pending token (clamped at the end of the context, like the Generator)."""
        return min(self.real - 1, self.context - 1)

    def accept(self, logits: np.ndarray) -> str:
        """logits [V] of this row's last position -> the text piece released by the sampled token."""
        tok = int(self.sampler(logits[None])[0])
        self.sampler.observe(np.asarray([[tok]]))
        self.tokens.append(tok)
        self.pending = tok
        self.real += 1
        piece = self.tracker.add(tok) if self.tracker else ""
        self.finish_reason = finish_reason(tok, self.stop_ids, self.tracker, len(self.tokens),
                                           self.config.max_new_tokens, self.real, self.context)
        if self.finish_reason and self.tracker:
            piece += self.tracker.finish()
        now = time.perf_counter()
        self.first_token_at = self.first_token_at or now
        self.previous_token_at, self.last_token_at = self.last_token_at, now
        return piece

    def result(self) -> Result:
        n = len(self.tokens)
        ttft = (self.first_token_at - self.request.arrived) * 1e3 if self.first_token_at else 0.0
        decode = (self.last_token_at - self.first_token_at) * 1e3 if n > 1 else 0.0
        return Result(text=self.tracker.text if self.tracker else None, token_ids=list(self.tokens),
                      prompt_token_ids=list(self.request.prompt_ids), preference=self.preference.tolist(),
                      router_mix=self.mix.tolist(), finish_reason=self.finish_reason,
                      timings={"ttft_ms": ttft, "decode_ms_per_token": decode / (n - 1) if n > 1 else 0.0,
                               "prompt_tokens": len(self.request.prompt_ids), "new_tokens": n})

