"""Level-1 experts by best-of-n rejection-sampling fine-tuning (one PEFT LoRA adapter per objective).

    train prompts ─► base samples n answers each (T=0.8) ─► candidates = answers + their sentence-end cuts
                 ─► score every candidate with every objective (rewards in [0, 1])
                 ─► expert i: SFT a LoRA on (prompt → candidate with the best R_i), loss on answer tokens only

One sampling pass serves all objectives. Cutting answers at sentence ends (then EOS) gives the best-of-n
pool short, complete answers that 40 sampled tokens rarely reach, so the experts can learn when to stop.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from hoe.core.atomic import atomic_write_text, staged_folder
from hoe.core.objectives import Objective, score_all
from tqdm import tqdm

from .config import ExpertConfig, SampleConfig
from .data import ChatCodec, sentence_prefixes
from .lm import answer_logprobs
from .sampling import sample
from .state import RunState, read_jsonl

log = logging.getLogger(__name__)


def sample_answers(model, codec: ChatCodec, prompts: list[str], cfg: SampleConfig, seed: int,
                   out: Path) -> list[dict]:
    """n answers per prompt from `model`, appended to `out` (JSONL) batch by batch; finished batches
    are kept when resumed. -> rows {"prompt", "answers": [text], "finished": [bool]}"""
    rows = read_jsonl(out)  # batches finished before an interruption (a partial last line is dropped)
    start = len(rows)
    batches = range(start, len(prompts), cfg.batch_prompts)
    for b in tqdm(batches, desc="best-of-n sampling", unit="batch", initial=start // cfg.batch_prompts,
                  total=-(-len(prompts) // cfg.batch_prompts)):
        chunk = prompts[b:b + cfg.batch_prompts]
        got = sample(model, [codec.prompt_ids(p) for p in chunk], cfg.n_samples, cfg.max_new_tokens,
                     codec.eos_id, codec.pad_id, cfg.temperature, cfg.top_p, seed=seed * 100_003 + b)
        with open(out, "a", encoding="utf-8") as f:
            for i, prompt in enumerate(chunk):
                sl = slice(i * cfg.n_samples, (i + 1) * cfg.n_samples)
                row = {"prompt": prompt, "answers": [codec.decode(t) for t in got.tokens[sl]],
                       "finished": got.finished[sl]}
                rows.append(row)
                f.write(json.dumps(row) + "\n")
    return rows


def candidates(row: dict, with_prefixes: bool) -> list[tuple[str, bool]]:
    """(text, finished) candidates of one prompt: each sample and, optionally, its sentence-end cuts."""
    out = []
    for text, finished in zip(row["answers"], row["finished"]):
        out.append((text, finished))
        if with_prefixes:
            out.extend((p, True) for p in sentence_prefixes(text))
    seen, unique = set(), []
    for c in out:
        if c[0] and c not in seen:
            seen.add(c)
            unique.append(c)
    return unique or [("", True)]


def score_candidates(rows: list[dict], objectives: list[Objective], with_prefixes: bool) -> list[dict]:
    """-> per prompt {"prompt", "candidates": [[text, finished]], "rewards": [[m floats]], "n_samples"}."""
    flat_prompts, flat_texts, spans, cands = [], [], [], []
    for row in rows:
        c = candidates(row, with_prefixes)
        spans.append((len(flat_texts), len(flat_texts) + len(c)))
        cands.append(c)
        flat_prompts += [row["prompt"]] * len(c)
        flat_texts += [t for t, _ in c]
    rewards = score_all(objectives, flat_prompts, flat_texts)  # [C, m]
    sample_rewards = score_all(objectives, [r["prompt"] for r in rows for _ in r["answers"]],
                               [a for r in rows for a in r["answers"]])
    n = len(rows[0]["answers"])
    out = []
    for i, (row, c, (s, e)) in enumerate(zip(rows, cands, spans)):
        out.append({"prompt": row["prompt"], "candidates": [list(x) for x in c],
                    "rewards": rewards[s:e].round(6).tolist(),
                    "sample_rewards": sample_rewards[i * n:(i + 1) * n].round(6).tolist()})
    return out


def best_of_n(scored: list[dict], objective: int) -> list[tuple[str, str, bool]]:
    """(prompt, best answer, finished) per prompt for one objective (ties: the first candidate)."""
    out = []
    for row in scored:
        j = int(np.argmax(np.asarray(row["rewards"])[:, objective]))
        text, finished = row["candidates"][j]
        out.append((row["prompt"], text, bool(finished)))
    return out


def reward_summary(scored: list[dict]) -> dict[str, list[float]]:
    """Mean reward of the base's samples, and of the best candidate per objective (z*, the ideal point)."""
    base = np.concatenate([np.asarray(r["sample_rewards"]) for r in scored]).mean(0)
    best = np.stack([np.asarray(r["rewards"]).max(0) for r in scored]).mean(0)
    return {"base_mean": base.round(6).tolist(), "best_of_n_mean": best.round(6).tolist()}


def sft_adapter(base, codec: ChatCodec, data: list[tuple[str, str, bool]], cfg: ExpertConfig, seed: int,
                out: Path, run: RunState, stage: str) -> Path:
    """Fine-tune a fresh PEFT LoRA adapter on (prompt → answer) pairs; loss on answer tokens only."""
    import copy

    from peft import LoraConfig, get_peft_model

    run.drop_records(stage, 0)  # an interrupted attempt restarts this expert from scratch
    torch.manual_seed(seed)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.target_modules))
    model = get_peft_model(copy.deepcopy(base), lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    pairs = [(codec.prompt_ids(p), codec.answer_ids(a, f)) for p, a, f in data]
    rng = random.Random(seed)
    n_batches = -(-len(pairs) // cfg.batch_size)
    step = 0
    with tqdm(total=cfg.epochs * n_batches, desc=f"SFT {stage}", unit="step") as bar:
        for epoch in range(cfg.epochs):
            order = list(range(len(pairs)))
            rng.shuffle(order)
            for b in range(n_batches):
                batch = [pairs[i] for i in order[b * cfg.batch_size:(b + 1) * cfg.batch_size]]
                logp, mask = answer_logprobs(model, [p for p, _ in batch], [a for _, a in batch], codec.pad_id)
                loss = -(logp.sum() / mask.sum())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                run.log({"stage": stage, "step": step, "epoch": epoch, "loss": round(float(loss.detach()), 6)})
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
                bar.update()
                step += 1
    model.eval()
    with staged_folder(out, replace=True) as tmp:
        model.save_pretrained(tmp)
    return out


def save_json(path: Path, data) -> None:
    atomic_write_text(path, json.dumps(data) + "\n")
