"""`torch-compile`: the HoE PyTorch reference at its best — torch.compile over a static KV cache.

    hoe.core HoEModel (same weights as the export) ─► transformers StaticCache [B, Hkv, max_length, D]
      ─► torch.compile(causal LM forward, dynamic=False): every step has fixed shapes
         (ids [B,T], mask [B,max_length], positions [B,T], cache_position [T]), so one graph per T

The first call of each new shape compiles (the prefill, the decode step); `TorchCompileSystem.compile_ms`
holds that time, reported apart from the timed decode (the benchmark's warm-up runs absorb it).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .systems import System

log = logging.getLogger(__name__)


class TorchCompileSystem(System):
    """HoEModel under torch.compile with a StaticCache; the router_mix row is fixed at construction. The model
    becomes the system's own: its adapted linears read the system's state from then on (`_AttributeState`)."""

    name = "torch-compile"

    def __init__(self, model, router_mix: np.ndarray, threads: int, max_length: int, mode: str | None = None) -> None:
        import torch

        torch.set_num_threads(threads)
        self.torch = torch
        self.hoe = model.eval()
        self.lm = model.model
        self.router_mix = torch.from_numpy(np.asarray(router_mix, dtype=np.float32))[None]  # [1, K]
        self.state = _AttributeState(model.named_tensors())
        _use_state(model, self.state)
        self._mix: dict[int, object] = {}
        self.max_length = max_length
        self.forward = torch.compile(self._forward, dynamic=False, mode=mode)
        self.compile_ms: dict[str, float] = {}
        self._seen: set[tuple] = set()
        self._caches: dict[int, object] = {}

    def _forward(self, input_ids, attention_mask, position_ids, cache_position, cache):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      cache_position=cache_position, past_key_values=cache, use_cache=True)
        return out.logits[:, -1]

    def new_state(self, batch: int):
        """One StaticCache per batch size, reset per run (a new cache object would recompile)."""
        from transformers import StaticCache

        if batch not in self._caches:
            self._caches[batch] = StaticCache(config=self.lm.config, max_cache_len=self.max_length)
        cache = self._caches[batch]
        cache.reset()
        return {"cache": cache, "past": 0}

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        torch = self.torch
        b, t = input_ids.shape
        past = state["past"]
        mask = np.zeros((b, self.max_length), dtype=np.int64)
        mask[:, : attention_mask.shape[1]] = attention_mask  # fixed width: future columns masked
        key = (b, t)
        start = time.perf_counter()
        if b not in self._mix:  # the same tensor every step of a batch size (dynamo guards on it)
            self._mix[b] = self.router_mix.expand(b, -1).contiguous()  # [B, K]
        self.state.router_mix = self._mix[b]
        with torch.no_grad():
            logits = self.forward(torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                                  torch.from_numpy(mask), torch.from_numpy(np.ascontiguousarray(position_ids)),
                                  torch.arange(past, past + t), state["cache"])
        if key not in self._seen:  # the first call of a shape compiles it
            self._seen.add(key)
            self.compile_ms[f"batch{b}_tokens{t}"] = (time.perf_counter() - start) * 1e3
        state["past"] = past + t
        return logits.float().numpy()


class _AttributeState:
    """What HoELinear reads (hoe.core.model.HoEState's `tensors`, `router_mix`) as plain attributes, fixed for the
    model's life. Dynamo cannot trace HoEState's ContextVar (a graph break at every adapted linear), and a new
    dict or tensor per step made it recompile until its limit (8) and then run eager. The model is this
    system's own and runs on one thread, which is all HoEState's per-call binding is for."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors
        self.router_mix = None  # [B, K], set before each step


def _use_state(model, state: _AttributeState) -> None:
    from hoe.core.model import HoELinear

    for module in model.modules():
        if isinstance(module, HoELinear):
            module.state = state
