"""What weight quantization costs: the shipped graph against the fp32 model on held-out prompts.

Parity (validate.py) proves the graph against a reference holding the graph's own dequantized weights;
this measures how far those weights move the model from its fp32 original:

    held-out prompt (hoe.data heldout.jsonl, raw text; random ids without a tokenizer), one preference each
      fp32 PyTorch (original weights) greedy N tokens ─► tokens_ref
      shipped graph (onnxruntime, its accuracy level) greedy N tokens ─► tokens_q
      greedy_agreement      identical prefix of tokens_q and tokens_ref / N   (mean over prompts)
      token_agreement       positions where tokens_q == tokens_ref / N
      both fed prompt + tokens_ref (teacher forcing, one step per token as in decoding): next-token
      KL(p_ref || p_q) per position (mean, max) and top-1 agreement
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hoe.contract import manifest as mf
from hoe.contract.io_spec import LOGITS
from hoe.core.config import JsonConfig
from hoe.core.preference import PreferenceRouter

log = logging.getLogger(__name__)


@dataclass
class QualityConfig(JsonConfig):
    prompts: int = 8  # first held-out prompts
    new_tokens: int = 64  # greedy tokens per prompt
    threads: int = 2
    seed: int = 0


def quality_report(folder, base_dir, ckpt_dir, config: QualityConfig | None = None) -> dict:
    """The shipped graph in `folder` vs the fp32 PyTorch model of `base_dir` (+ `ckpt_dir`)."""
    from .validate import _OrtModel, _Reference, default_preferences

    config = config or QualityConfig()
    folder = Path(folder)
    manifest = mf.load_manifest(folder)
    ref = _Reference(base_dir, ckpt_dir if manifest["hoe"].get("enabled", True) else None, manifest, "fp32",
                     config.threads, float_cache=True)
    ort = _OrtModel(folder, manifest, config.threads)
    hoe, router = manifest["hoe"], PreferenceRouter.from_hoe(manifest["hoe"])
    prefs = default_preferences(len(hoe["objectives"])) if hoe.get("enabled", True) else [None]
    rows = []
    for i, ids in enumerate(_prompt_ids(folder, manifest, config)):
        pref = prefs[i % len(prefs)]
        mix = None if pref is None else router.route(pref, 1)[1]  # [1, K] float32
        rows.append(_compare(ref, ort, np.asarray([ids], dtype=np.int64), mix, config.new_tokens))
    kl = np.concatenate([r["kl"] for r in rows])
    return {"vs": "fp32 PyTorch reference (original weights)", "graph": "as shipped",
            "weights": manifest.get("quantization", {}).get("weights", "fp32"),
            "kv_cache": (manifest.get("kv_cache") or {}).get("dtype", manifest["model"]["dtype"]), "prompts": len(rows),
            "new_tokens": config.new_tokens,
            "greedy_agreement": float(np.mean([r["prefix"] for r in rows])),
            "token_agreement": float(np.mean([r["same"] for r in rows])),
            "teacher_forced_top1": float(np.mean(np.concatenate([r["top1"] for r in rows]))),
            "mean_kl": float(kl.mean()), "max_kl": float(kl.max()),
            "per_prompt_greedy_agreement": [round(float(r["prefix"]), 4) for r in rows]}


def _prompt_ids(folder: Path, manifest: dict, config: QualityConfig) -> list[list[int]]:
    from importlib.resources import files

    tok_file = manifest["files"].get("tokenizer")
    if tok_file and (folder / tok_file).is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / tok_file))
        lines = files("hoe.data").joinpath("prompts/heldout.jsonl").read_text().splitlines()
        texts = [json.loads(line)["prompt"] for line in lines if line.strip()][: config.prompts]
        return [tokenizer.encode(t).ids for t in texts]
    rng = np.random.default_rng(config.seed)
    vocab = manifest["architecture"]["vocab_size"]
    return [rng.integers(2, vocab, size=8).tolist() for _ in range(config.prompts)]


def _greedy(runner, ids: np.ndarray, mix, n: int) -> list[int]:
    """n greedy tokens after `ids` [1, T] (no EOS stop: both sides run the same length); `runner`: a parity
    runner (hoe.contract.parity) on its own KV cache."""
    mask = np.ones_like(ids)
    pos = np.arange(ids.shape[1], dtype=np.int64)[None]
    runner.reset(1)
    out = []
    for _ in range(n):
        token = int(runner.run(ids, mask, pos, mix)[LOGITS][0, -1].argmax())
        out.append(token)
        ids = np.array([[token]], dtype=np.int64)
        pos = pos[:, -1:] + 1
        mask = np.concatenate([mask, np.ones((1, 1), dtype=np.int64)], axis=1)
    return out


def _forced_logits(runner, ids: np.ndarray, mix, n: int) -> np.ndarray:
    """Logits [n, V] float64 of the last n positions of `ids` [1, T] from an empty cache, computed as decoding
    computes them: the prompt in one step, then each of the n-1 forced tokens in its own step (an int8 KV cache
    then reads them back rounded, as it does in use)."""
    runner.reset(1)
    start = ids.shape[1] - n + 1
    mask, pos = np.ones_like(ids), np.arange(ids.shape[1], dtype=np.int64)[None]
    out = [runner.run(ids[:, :start], mask[:, :start], pos[:, :start], mix)[LOGITS][0, -1:]]
    for t in range(start, ids.shape[1]):
        out.append(runner.run(ids[:, t:t + 1], mask[:, :t + 1], pos[:, t:t + 1], mix)[LOGITS][0])
    return np.concatenate(out).astype(np.float64)


def _compare(ref, ort, ids: np.ndarray, mix, n: int) -> dict:
    want = _greedy(ref, ids, mix, n)
    got = _greedy(ort, ids, mix, n)
    same = np.asarray(want) == np.asarray(got)
    prefix = int(np.argmin(same)) if not same.all() else n
    full = np.concatenate([ids, np.asarray([want[:-1]], dtype=np.int64)], axis=1)  # [1, T+n-1]
    ref_logits, q_logits = _forced_logits(ref, full, mix, n), _forced_logits(ort, full, mix, n)  # [n, V]
    p, logp, logq = _softmax(ref_logits), _log_softmax(ref_logits), _log_softmax(q_logits)
    return {"prefix": prefix / n, "same": float(same.mean()), "kl": (p * (logp - logq)).sum(-1),
            "top1": ref_logits.argmax(-1) == q_logits.argmax(-1)}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(x))
