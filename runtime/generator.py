"""Low-level generation, in the spirit of onnxruntime-genai: append_tokens / generate_next_token / is_done.

    gen = model.generator(preference=[0.2, 0.5, 0.3], config=GenerationConfig(max_new_tokens=32))
    gen.append_tokens(prompt_ids)          # one list per row; rows are left-padded
    while not gen.is_done():
        gen.generate_next_token()          # one forward pass (prefill on the first call), then sample
    gen.set_preference([1, 0, 0])          # any time: used by the next forward pass, not before

Each call of `generate_next_token` first runs the tokens not yet seen by the model (the prompt,
then the previously sampled token) with the router_mix active *now*, then samples from the last
logits. So a preference change affects exactly the tokens generated after it; the K/V of earlier
tokens stay as they were computed (nothing is recomputed, re-merged or rebuilt).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from hoe.core.errors import InputError
from hoe.core.positions import positions

from .config import GenerationConfig
from .result import Result
from .sampling import Sampler
from .text import TextTracker

log = logging.getLogger(__name__)


class Generator:
    """Generation state of one batch: its KV cache, router_mix [B, K], sampler and outputs."""

    def __init__(self, model, preference=None, config: GenerationConfig | None = None) -> None:
        self.model = model
        self.config = config if config is not None else model.default_config()
        self._stop_ids = stop_ids(model, self.config)
        self._routed = model.router.prepare(preference)  # validated and routed once
        self._prompts: list[list[int]] = []
        self._state = None
        self.timings = {"prefill_ms": 0.0, "decode_ms": 0.0, "decode_steps": 0}

    # -- inputs ----------------------------------------------------------------------------------------
    def append_tokens(self, tokens) -> None:
        """Prompt token ids: one list per row ([[...], [...]]) or one list for a single row."""
        if self._state is not None:
            raise InputError("append_tokens after generation started is not supported; start a new Generator")
        rows = _as_rows(tokens)
        if not self._prompts:
            self._prompts = rows
        elif len(rows) != len(self._prompts):
            raise InputError(f"append_tokens: expected {len(self._prompts)} rows, got {len(rows)}")
        else:
            self._prompts = [a + b for a, b in zip(self._prompts, rows)]

    def set_preference(self, preference, rows=None) -> None:
        """New preference for all rows, or for `rows` (indices); used from the next forward pass on."""
        routed = self.model.router.prepare(preference)
        if self._state is None and rows is None:
            self._routed = routed
            return
        if self._state is None:
            self._start()
        idx = list(range(self.batch)) if rows is None else [int(r) for r in np.atleast_1d(rows)]
        bad = [r for r in idx if not 0 <= r < self.batch]
        if bad:
            raise InputError(f"set_preference rows must be in [0, {self.batch}), got {bad}")
        self.preferences[idx], self.router_mix[idx] = routed.for_batch(len(idx))

    # -- stepping --------------------------------------------------------------------------------------
    def is_done(self) -> bool:
        return self._state is not None and bool(self.done.all())

    def generate_next_token(self) -> np.ndarray:
        """Run the pending tokens, sample one token per row -> token ids [B] (finished rows get pad)."""
        if self._state is None:
            self._start()
        if self.is_done():
            raise InputError("generation is finished (every row hit a stop or its length limit)")
        start = time.perf_counter()
        t = self._pending.shape[1]
        mask = self._mask[:, : self._columns + t]  # [B, P+T]
        logits = self.model.backend.step(self._state, self._pending, np.ascontiguousarray(mask),
                                         self._positions, self.router_mix)  # [B, V]
        self._columns += t
        tokens = self._sampler(logits)  # [B]
        tokens[self.done] = self._pad
        self._record(tokens)
        self._pending = tokens[:, None]  # [B, 1]
        self._positions = np.minimum(self._real, self._last_position)[:, None]  # [B, 1]; finished rows clamped
        self._real += 1
        self._mask[:, self._columns] = 1
        self._time(start)
        return tokens

    # -- outputs ---------------------------------------------------------------------------------------
    def get_sequence(self, row: int) -> list[int]:
        """Generated token ids of one row (prompt excluded)."""
        return list(self.tokens[row])

    def text(self, row: int) -> str:
        if self._trackers is None:
            raise InputError("this export has no tokenizer: only token ids are available")
        return self._trackers[row].text

    def results(self) -> list[Result]:
        steps, decode = self.timings["decode_steps"], self.timings["decode_ms"]
        common = {"prefill_ms": self.timings["prefill_ms"],
                  "decode_ms_per_token": decode / steps if steps else 0.0,
                  "total_ms": self.timings["prefill_ms"] + decode}
        out = []
        for b in range(self.batch):
            timings = dict(common, prompt_tokens=len(self._prompts[b]), new_tokens=len(self.tokens[b]))
            out.append(Result(text=self._trackers[b].text if self._trackers else None, token_ids=self.get_sequence(b),
                              prompt_token_ids=list(self._prompts[b]), preference=self.preferences[b].tolist(),
                              router_mix=self.router_mix[b].tolist(), finish_reason=self.finish_reasons[b],
                              timings=timings))
        return out

    # -- internals -------------------------------------------------------------------------------------
    def _start(self) -> None:
        if not self._prompts:
            raise InputError("no prompt: call append_tokens first")
        m = self.model
        self._check_prompts()
        b = self.batch = len(self._prompts)
        self.preferences, self.router_mix = self._routed.for_batch(b)  # [B, m] float64, [B, K] float32
        lengths = np.array([len(p) for p in self._prompts])
        width = int(lengths.max())
        self._pad = m.manifest.pad_token_id
        ids = np.full((b, width), self._pad, dtype=np.int64)  # [B, T0] left-padded
        self._mask = np.zeros((b, width + self.config.max_new_tokens + 1), dtype=np.int64)  # [B, T0 + N + 1]
        for r, p in enumerate(self._prompts):
            ids[r, width - len(p):] = p
            self._mask[r, width - len(p):width] = 1
        self._pending = ids
        self._positions = positions(self._mask[:, :width])  # [B, T0]
        self._real = lengths.astype(np.int64)
        self._last_position = m.manifest.context_length - 1
        self._columns = 0  # mask columns already in the KV cache
        self._steps = 0
        self._sampler = Sampler(self.config, b, m.manifest.vocab_size)
        self._sampler.observe(np.where(self._mask[:, :width] > 0, ids, -1))
        self._trackers = [TextTracker(m.tokenizer, self.config.stop) for _ in range(b)] if m.tokenizer else None
        self.tokens = [[] for _ in range(b)]
        self.pieces = [""] * b  # text released by the last step, per row (for streaming)
        self.done = np.zeros(b, dtype=bool)
        self.finish_reasons: list[str | None] = [None] * b
        self._state = m.backend.new_state(b)

    def _check_prompts(self) -> None:
        ctx, vocab = self.model.manifest.context_length, self.model.manifest.vocab_size
        for r, p in enumerate(self._prompts):
            check_prompt(p, ctx, vocab, f"prompt {r}")

    def _record(self, tokens: np.ndarray) -> None:
        live = np.flatnonzero(~self.done)
        self._sampler.observe(tokens[:, None], rows=live)
        ctx = self.model.manifest.context_length
        self.pieces = [""] * self.batch
        for b in live:
            tok = int(tokens[b])
            self.tokens[b].append(tok)
            if self._trackers is not None:
                self.pieces[b] = self._trackers[b].add(tok)
            tracker = self._trackers[b] if self._trackers is not None else None
            reason = finish_reason(tok, self._stop_ids, tracker, len(self.tokens[b]), self.config.max_new_tokens,
                                   self._real[b] + 1, ctx)
            if reason:
                self.done[b], self.finish_reasons[b] = True, reason
                if self._trackers is not None:
                    self.pieces[b] += self._trackers[b].finish()

    def _time(self, start: float) -> None:
        ms = (time.perf_counter() - start) * 1e3
        if self._steps == 0:
            self.timings["prefill_ms"] = ms
        else:
            self.timings["decode_ms"] += ms
            self.timings["decode_steps"] += 1
        self._steps += 1


def _as_rows(tokens) -> list[list[int]]:
    arr = tokens.tolist() if isinstance(tokens, np.ndarray) else tokens
    if not isinstance(arr, (list, tuple)) or not arr:
        raise InputError(f"tokens must be a non-empty list of token ids or of such lists, got {tokens!r}")
    rows = [arr] if all(isinstance(t, (int, np.integer)) for t in arr) else arr
    try:
        return [[int(t) for t in row] for row in rows]
    except (TypeError, ValueError) as e:
        raise InputError(f"tokens must be integer ids, got {tokens!r}") from e


def check_prompt(ids: list[int], context: int, vocab: int, name: str = "the prompt") -> None:
    """One prompt's rules (the Generator's, and hoe.serve's per request): non-empty, shorter than the context,
    ids in the vocabulary."""
    if not ids:
        raise InputError(f"{name} is empty; expected at least one token")
    if len(ids) >= context:
        raise InputError(f"{name} has {len(ids)} tokens; the model's context is {context} tokens "
                         f"(max_position_embeddings), so a prompt may have at most {context - 1}")
    lo, hi = min(ids), max(ids)
    if lo < 0 or hi >= vocab:
        raise InputError(f"{name} has token ids in [{lo}, {hi}]; expected ids in [0, {vocab})")


def stop_ids(model, config: GenerationConfig) -> set[int]:
    """Token ids that end a row under `config`: its stop ids, and EOS unless ignore_eos. InputError when it has
    stop strings and the model no tokenizer."""
    if config.stop and model.tokenizer is None:
        raise InputError(f"stop strings {config.stop} need a tokenizer; this export has none")
    return set(config.stop_token_ids) | (set() if config.ignore_eos else set(model.manifest.eos_token_ids))


def finish_reason(tok: int, stops: set[int], tracker, new_tokens: int, max_new_tokens: int, length: int,
                  context: int) -> str | None:
    """Why a row ends after sampling `tok`: "stop" (a stop id or stop string), "length" (`new_tokens` reached
    max_new_tokens, or `length` = prompt + output, tok included, fills the context), or None."""
    if tok in stops or (tracker is not None and tracker.stopped):
        return "stop"
    if new_tokens >= max_new_tokens or length >= context:
        return "length"
    return None
