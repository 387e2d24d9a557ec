"""One forward call for every kind of model the recipe and the benchmarks drive.

`model` is a Hugging Face causal LM (optionally PEFT-wrapped) or a `HoEModel`; a HoEModel is driven
through its inner causal LM so that `logits_to_keep` can skip the LM head on positions nobody reads
(the head is 28M of SmolLM2's 135M parameters).
"""

from __future__ import annotations

import contextlib

import torch
from hoe.core.model import HoEModel, cache_kwarg, output_cache
from hoe.core.positions import positions


def _inner_hf(model):
    """The Hugging Face model whose forward signature names the cache argument."""
    if isinstance(model, HoEModel):
        return model.model
    get_base = getattr(model, "get_base_model", None)
    return get_base() if get_base is not None else model


def forward_logits(model, input_ids, attention_mask, position_ids, cache=None, keep: int = 0, router_mix=None,
                   tensors=None):
    """input_ids: [B,T], attention_mask: [B,P+T], position_ids: [B,T] -> (logits [B, keep or T, V], cache).

    router_mix: [B or 1, K], required for a HoEModel (a single row broadcasts over the batch);
    tensors: expert/router tensors to run the HoEModel with instead of its own (canonical names).
    """
    bound = contextlib.nullcontext()
    hf = model
    if isinstance(model, HoEModel):
        if router_mix is None:
            raise ValueError("a HoEModel needs router_mix [B or 1, K]")
        bound = model.state.bind(model.named_tensors() if tensors is None else tensors, router_mix)
        hf = model.model
    kwargs = {cache_kwarg(_inner_hf(model)): cache}
    with bound:
        out = hf(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                 logits_to_keep=keep, **kwargs)
    return out.logits, output_cache(out)


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids [B, T], mask [B, T]) left-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids, mask


def answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int,
                    router_mix=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced log π(answer tokens | prompt, previous tokens), with gradients.

        [pad..pad prompt | answer pad..pad]  prompts left-padded to P, answers right-padded to A
        logits at columns P-1 .. P+A-2 predict answer tokens 0 .. A-1 (LM head on A+1 columns only)

    -> (logp [B, A], mask [B, A]) with mask = 1 on real answer tokens.
    """
    p_ids, p_mask = left_pad(prompts, pad_id)
    a_ids, a_mask = right_pad(answers, pad_id)  # [B, A]
    width = a_ids.shape[1]
    ids = torch.cat([p_ids, a_ids], dim=1)  # [B, P+A]
    mask = torch.cat([p_mask, a_mask], dim=1)
    logits, _ = forward_logits(model, ids, mask, positions(mask), keep=width + 1, router_mix=router_mix)
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, A, V]
    token_logp = logp.gather(-1, a_ids[..., None]).squeeze(-1)  # [B, A]
    return token_logp * a_mask, a_mask


def right_pad(answers: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Answers right-padded to the longest (at least 1) -> (ids [B, A], mask [B, A])."""
    width = max(1, max(len(a) for a in answers))
    ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(answers), width), dtype=torch.long)
    for i, a in enumerate(answers):
        ids[i, :len(a)] = torch.tensor(a, dtype=torch.long)
        mask[i, :len(a)] = 1
    return ids, mask


def grouped_answer_logprobs(model, prompts: list[list[int]], answers: list[list[int]], k: int, pad_id: int,
                            router_mix=None) -> tuple[torch.Tensor, torch.Tensor]:
    """`answer_logprobs` for k answers per prompt, the prompt computed once per group (same values, same gradient).

        prompts [U] (+ router_mix [U, K])  ─► one pass with a KV cache ─► cache and last logits repeated k times
        answers [U·k] (row u·k + j answers prompt u) ─► answer tokens 0 .. A-2 on top of the shared cache

    -> (logp [U·k, A], mask [U·k, A]); gradients flow through the shared prompt pass (autograd sums the k uses).
    """
    if len(answers) != k * len(prompts):
        raise ValueError(f"expected {k} answers per prompt ({k * len(prompts)}), got {len(answers)}")
    p_ids, p_mask = left_pad(prompts, pad_id)  # [U, P]
    last, cache = forward_logits(model, p_ids, p_mask, positions(p_mask), keep=1, router_mix=router_mix)
    a_ids, a_mask = right_pad(answers, pad_id)  # [B, A]
    width = a_ids.shape[1]
    logits = last.repeat_interleave(k, dim=0)  # [U·k, 1, V] predicts answer token 0
    if width > 1:
        cache.batch_repeat_interleave(k)
        mix = router_mix.repeat_interleave(k, dim=0) if router_mix is not None and router_mix.shape[0] > 1 \
            else router_mix
        mask = torch.cat([p_mask.repeat_interleave(k, dim=0), a_mask[:, :-1]], dim=1)  # [U·k, P+A-1]
        pos = positions(mask)[:, p_ids.shape[1]:]
        rest, _ = forward_logits(model, a_ids[:, :-1], mask, pos, cache=cache, router_mix=mix)  # [U·k, A-1, V]
        logits = torch.cat([logits, rest], dim=1)
    logp = torch.log_softmax(logits.float(), dim=-1)  # [U·k, A, V]
    token_logp = logp.gather(-1, a_ids[..., None]).squeeze(-1)
    return token_logp * a_mask, a_mask
