"""Greedy decoding of *mixed streams* through the KV cache: one decoder for every system of the Pareto bench.

A row is one (prompt, system, preference) answer; a stream is one forward pass feeding a row. A row's next
token is argmax_a Σ_s weight_s · log π_s(a | ·) over its streams:
  * HoE / static mixing / a single expert / the base: one stream per row, weight 1 (plain greedy);
  * MOD: one stream per expert with λ_i > 0, weight λ_i (log-probability mixing, one forward per expert).
Finished rows are dropped from the batch (and their streams from the cache) as soon as they emit EOS.

int8_cache: the cache an `--kv-cache int8` export's graph keeps (hoe.contract.kv_int8): each forward attends its
own tokens exact, then their cached keys and values are rounded to int8 rows, which every later step reads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from hoe.contract import kv_int8
from hoe.train.lm import forward_logits, left_pad, positions


@dataclass
class Prefilled:
    """Streams after their prompt pass: next-token log-probs, KV cache, attention mask."""

    logp: torch.Tensor  # [S, V]
    cache: object  # DynamicCache over S streams
    mask: torch.Tensor  # [S, P]
    router_mix: torch.Tensor | None  # [S, K] or None for a plain model


def round_new_columns(cache, steps: int) -> None:
    """In place: the last `steps` columns of every layer's keys and values, as their int8 rows read back."""
    for layer in cache.layers:
        for t in (layer.keys, layer.values):
            new = t[:, :, -steps:].float().numpy()
            t[:, :, -steps:] = torch.from_numpy(kv_int8.dequantize(kv_int8.quantize(new))).to(t.dtype)


@torch.no_grad()
def prefill(model, prompts: list[list[int]], pad_id: int, router_mix=None, tensors=None,
            int8_cache: bool = False) -> Prefilled:
    """One prompt pass for S streams (router_mix [S, K] for a HoE model)."""
    ids, mask = left_pad(prompts, pad_id)
    logits, cache = forward_logits(model, ids, mask, positions(mask), keep=1, router_mix=router_mix,
                                   tensors=tensors)
    if int8_cache:
        round_new_columns(cache, ids.shape[1])
    return Prefilled(torch.log_softmax(logits[:, -1].float(), -1), cache, mask, router_mix)


def select(pre: Prefilled, index: torch.Tensor) -> Prefilled:
    """A new Prefilled holding streams `index` (repeats allowed); `pre` is left untouched."""
    cache = copy.deepcopy(pre.cache)
    cache.batch_select_indices(index)
    mix = pre.router_mix[index] if pre.router_mix is not None else None
    return Prefilled(pre.logp[index], cache, pre.mask[index], mix)


@torch.no_grad()
def decode(model, pre: Prefilled, row_of: torch.Tensor, weight: torch.Tensor, n_rows: int, max_new_tokens: int,
           eos_id: int, tensors=None, int8_cache: bool = False) -> list[list[int]]:
    """Greedy answers [n_rows] (EOS excluded) from streams `pre` (stream s feeds row row_of[s] with weight[s])."""
    out: list[list[int]] = [[] for _ in range(n_rows)]
    alive = torch.arange(n_rows)  # original ids of the rows still generating
    logp, cache, mask, mix = pre.logp, pre.cache, pre.mask, pre.router_mix
    row_of = row_of.clone()  # compact row index (into alive) of each live stream
    for _ in range(max_new_tokens):
        mixed = torch.zeros(len(alive), logp.shape[-1]).index_add_(0, row_of, weight[:, None] * logp)  # [R, V]
        token = mixed.argmax(-1)  # [R]
        finished = token == eos_id
        for r, t, f in zip(alive.tolist(), token.tolist(), finished.tolist()):
            if not f:
                out[r].append(t)
        if bool(finished.all()):
            break
        if bool(finished.any()):  # drop finished rows and their streams
            keep_rows = (~finished).nonzero().squeeze(-1)
            new_index = torch.full((len(alive),), -1, dtype=torch.long)
            new_index[keep_rows] = torch.arange(len(keep_rows))
            keep_streams = (~finished[row_of]).nonzero().squeeze(-1)
            cache.batch_select_indices(keep_streams)
            mask, weight = mask[keep_streams], weight[keep_streams]
            mix = mix[keep_streams] if mix is not None else None
            row_of = new_index[row_of[keep_streams]]
            alive, token = alive[keep_rows], token[keep_rows]
        stream_token = token[row_of]  # [S]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = forward_logits(model, stream_token[:, None], mask, positions(mask)[:, -1:], cache=cache,
                                       keep=1, router_mix=mix, tensors=tensors)
        if int8_cache:
            round_new_columns(cache, 1)
        logp = torch.log_softmax(logits[:, -1].float(), -1)
    return out
