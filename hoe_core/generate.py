"""Reference generation with the PyTorch HoE model: prefill, then one token at a time through the KV cache.

Left padding: `attention_mask` marks real tokens; positions count real tokens only.
"""

from __future__ import annotations

import torch

from .model import HoEModel
from .positions import positions_from_mask


def sample_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """logits: [B, V] -> next token ids [B]. Greedy when temperature is 0."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest prefix reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: HoEModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, router_mix: torch.Tensor,
             max_new_tokens: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, eos_token_id: int | None = None) -> torch.Tensor:
    """input_ids/attention_mask: [B, T] left-padded, router_mix: [B, K] -> new token ids [B, N ≤ max_new_tokens].

    Rows that produced `eos_token_id` keep producing it (so the batch stays rectangular)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    mask = attention_mask.long()
    logits, cache = model(input_ids, router_mix, attention_mask=mask,
                          position_ids=positions_from_mask(mask, input_ids.shape[1]))
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    out = []
    for _ in range(max_new_tokens):
        token = sample_next(logits[:, -1], temperature, top_k, top_p, gen)
        if eos_token_id is not None:
            token = torch.where(done, torch.full_like(token, eos_token_id), token)
            done |= token == eos_token_id
        out.append(token)
        if eos_token_id is not None and bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits, cache = model(token[:, None], router_mix, attention_mask=mask,
                              position_ids=positions_from_mask(mask, 1), cache=cache)
    return torch.stack(out, dim=1)
