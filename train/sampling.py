"""Batched sampling through the KV cache, for the base model, PEFT models and HoE models.

Each prompt is prefilled once and its cache repeated `n` times, so best-of-n and the policy-gradient
groups pay one prefill per prompt, not per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hoe.core.generate import sample_next

from .lm import forward_logits, left_pad, positions


@dataclass
class Samples:
    tokens: list[list[int]]  # [B·n] answer token ids, EOS excluded
    finished: list[bool]  # [B·n] whether the answer ended with EOS (False: cut at max_new_tokens)


def repeat_cache(cache, n: int):
    if n > 1:
        cache.batch_repeat_interleave(n)
    return cache


@torch.no_grad()
def sample(model, prompts: list[list[int]], n: int, max_new_tokens: int, eos_id: int, pad_id: int,
           temperature: float = 0.8, top_p: float = 1.0, seed: int = 0, router_mix=None) -> Samples:
    """n answers per prompt (rows grouped by prompt: prompt 0's n answers first). Greedy at temperature 0.

    router_mix: [1 or B, K] for a HoEModel (row b's n answers all use row b's mix).
    """
    gen = torch.Generator().manual_seed(seed)
    ids, mask = left_pad(prompts, pad_id)  # [B, T]
    logits, cache = forward_logits(model, ids, mask, positions(mask), keep=1, router_mix=router_mix)
    logits = logits[:, -1].repeat_interleave(n, dim=0)  # [B·n, V]
    cache = repeat_cache(cache, n)
    if router_mix is not None and router_mix.shape[0] > 1:
        router_mix = router_mix.repeat_interleave(n, dim=0)  # [B·n, K]
    mask = mask.repeat_interleave(n, dim=0)
    rows = logits.shape[0]
    done = torch.zeros(rows, dtype=torch.bool)
    out = []
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, 0, top_p, gen)  # [B·n]
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token)
        done |= token == eos_id
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = positions(mask)[:, -1:]
        step_logits, cache = forward_logits(model, token[:, None], mask, pos, cache=cache, keep=1,
                                            router_mix=router_mix)
        logits = step_logits[:, -1]
    return _collect(torch.stack(out, dim=1), eos_id)


def _collect(tokens: torch.Tensor, eos_id: int) -> Samples:
    """tokens [R, N] -> per-row lists cut at the first EOS."""
    answers, finished = [], []
    for row in tokens.tolist():
        if eos_id in row:
            answers.append(row[:row.index(eos_id)])
            finished.append(True)
        else:
            answers.append(row)
            finished.append(False)
    return Samples(answers, finished)
