"""`torch-compile`: the HoE PyTorch reference at its best — torch.compile over a static KV cache.

    hoe.core HoEModel (same weights as the export) ─► transformers StaticCache [B, Hkv, max_length, D]
      ─► regional compilation: each decoder block is compiled (dynamic=False), the embedding, the causal mask,
         the rotary table, the final norm and lm_head run eager around them

Compiling the whole forward as one graph inlined all N blocks into one inductor graph (over 20 minutes per shape
for SmolLM2-135M's 30 HoE blocks on one core). The blocks run the same code, so they share one compiled graph
per shape (prefill T, decode T=1) if nothing a guard checks differs between them:

  * the HoE tensors: each block's adapted linears read a per-block `_AttributeState` whose `tensors` are keyed
    by the linear's name inside the block ("self_attn.q_proj"), not the model-wide name ("model.layers.7...");
    `router_mix` is the same [B, K] tensor object in every block and every step;
  * the KV cache: each block is handed `_LayerCache`, a view on its own StaticLayer, so the attention's
    `layer_idx` (an int, which dynamo would specialize on) never selects anything inside the graph; the cache
    layers are allocated up front (`early_initialization`), not lazily inside the first compiled call.

The first call of each new shape compiles; `TorchCompileSystem.compile_ms` holds that time, reported apart from
the timed decode (the benchmark's warm-up runs absorb it), and `compiles()` how many graphs dynamo built.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .systems import System

log = logging.getLogger(__name__)


class TorchCompileSystem(System):
    """HoEModel with its decoder blocks under torch.compile and a StaticCache; the router_mix row is fixed at
    construction. The model becomes the system's own: its adapted linears read the system's per-block state from
    then on (`_AttributeState`) and its blocks are wrapped (`_Block`)."""

    name = "torch-compile"

    def __init__(self, model, router_mix: np.ndarray, threads: int, max_length: int, mode: str | None = None) -> None:
        import torch
        import torch._dynamo.utils as dynamo_utils

        torch.set_num_threads(threads)
        self.torch = torch
        self.hoe = model.eval()
        self.lm = model.model
        self.router_mix = torch.from_numpy(np.asarray(router_mix, dtype=np.float32))[None]  # [1, K]
        self.blocks = _wrap_blocks(self.lm, model.named_tensors(), mode)
        self._mix: dict[int, object] = {}
        self.max_length = max_length
        self.compile_ms: dict[str, float] = {}
        self._seen: set[tuple] = set()
        self._caches: dict[int, object] = {}
        self._counters = dynamo_utils.counters
        self._graphs0 = self._counters["stats"]["unique_graphs"]

    def compiles(self) -> int:
        """Graphs dynamo built since construction (one per shape when the blocks share theirs)."""
        return self._counters["stats"]["unique_graphs"] - self._graphs0

    def new_state(self, batch: int):
        """One StaticCache per batch size, allocated once and reset per run (new tensors would not recompile, but
        cost an allocation); `step` points the blocks' cache views at its layers."""
        from transformers import StaticCache

        config = self.lm.config
        if batch not in self._caches:
            cache = StaticCache(config=config, max_cache_len=self.max_length)
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            cache.early_initialization(batch, config.num_key_value_heads, head_dim, self.lm.dtype, self.lm.device)
            self._caches[batch] = cache
        cache = self._caches[batch]
        cache.reset()
        return {"cache": cache, "past": 0}

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        torch = self.torch
        b, t = input_ids.shape
        for block, layer in zip(self.blocks, state["cache"].layers, strict=True):
            block.cache.layer = layer  # a state of another batch size may have run since
        mask = np.zeros((b, self.max_length), dtype=np.int64)
        mask[:, : attention_mask.shape[1]] = attention_mask  # fixed width: future columns masked
        key = (b, t)
        start = time.perf_counter()
        if b not in self._mix:  # the same tensor every step of a batch size (dynamo guards on it)
            self._mix[b] = self.router_mix.expand(b, -1).contiguous()  # [B, K]
        for block in self.blocks:
            block.state.router_mix = self._mix[b]
        with torch.no_grad():
            out = self.lm(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
                          attention_mask=torch.from_numpy(mask),
                          position_ids=torch.from_numpy(np.ascontiguousarray(position_ids)),
                          use_cache=True, logits_to_keep=1, **{self.hoe._cache_arg: state["cache"]})
        if key not in self._seen:  # the first call of a shape compiles it
            self._seen.add(key)
            self.compile_ms[f"batch{b}_tokens{t}"] = (time.perf_counter() - start) * 1e3
        state["past"] = state["past"] + t
        return out.logits[:, -1].float().numpy()


class _AttributeState:
    """What HoELinear reads (hoe.core.model.HoEState's `tensors`, `router_mix`) as plain attributes, fixed for the
    model's life. Dynamo cannot trace HoEState's ContextVar (a graph break at every adapted linear), and a new
    dict or tensor per step made it recompile until its limit (8) and then run eager. The model is this
    system's own and runs on one thread, which is all HoEState's per-call binding is for."""

    def __init__(self, tensors: dict) -> None:
        self.tensors = tensors
        self.router_mix = None  # [B, K], set before each step


class _LayerCache:
    """What one compiled block sees as its cache: its own StaticLayer, whatever `layer_idx` it is called with."""

    def __init__(self) -> None:
        self.layer = None  # a StaticLayer, set by new_state

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        return self.layer.update(key_states, value_states, *args, **kwargs)


def _block_class():
    from torch import nn

    class _Block(nn.Module):
        """A decoder block called with the model's cache, running the compiled block on its own cache view."""

        def __init__(self, block: nn.Module, state: _AttributeState) -> None:
            super().__init__()
            self.block = block
            self.state = state
            self.cache = _LayerCache()

        def forward(self, hidden_states, *args, **kwargs):
            kwargs["cache" if "cache" in kwargs else "past_key_values"] = self.cache  # per transformers version
            return self.block(hidden_states, *args, **kwargs)

    return _Block


def _wrap_blocks(lm, named: dict, mode: str | None) -> list:
    """Per block: its HoE linears renamed block-relative and bound to the block's own `_AttributeState`; the
    block compiled (its code, so every block shares the graph) and wrapped in `_Block`."""
    from hoe.core import names
    from hoe.core.capability import decoder_blocks
    from hoe.core.model import HoELinear

    blocks = lm.get_submodule(decoder_blocks(lm))
    block_class = _block_class()
    for i, block in enumerate(blocks):
        tensors = {names.ROUTER_MASK: named[names.ROUTER_MASK]}
        state = _AttributeState(tensors)
        for short, module in block.named_modules():
            if not isinstance(module, HoELinear):
                continue
            for key in (names.lora_a, names.lora_b, names.scaling, names.router_weight, names.router_bias):
                tensors[key(short)] = named[key(module.module_name)]
            module.module_name, module.state = short, state
        block.compile(dynamic=False, mode=mode)
        blocks[i] = block_class(block, state)
    return list(blocks)
