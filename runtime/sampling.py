"""Choosing the next token on the host, in numpy: repetition penalty, temperature, top-k, top-p, draw.

Order as in Hugging Face: penalty -> temperature -> top-k -> top-p -> softmax -> draw.
Greedy (temperature 0) is argmax of the penalised logits. A seeded `np.random.Generator`
makes sampling reproducible.
"""

from __future__ import annotations

import numpy as np

from .config import GenerationConfig

# top-p first looks among this many most likely tokens; exact, since it falls back to a full sort
# whenever their mass does not reach top_p.
_TOP_P_CANDIDATES = 256


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """In place. logits: [B, V] float32, seen: [B, V] bool (tokens in prompt or output)."""
    if penalty == 1.0:
        return
    hit = logits[seen]
    logits[seen] = np.where(hit > 0, hit / penalty, hit * penalty)


def softmax(x: np.ndarray) -> np.ndarray:
    """x: [..., V] -> probabilities [..., V] (float64 for stable cumulative sums)."""
    x = x.astype(np.float64)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def nucleus(probs: np.ndarray, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidates of one row. probs: [V] -> (token ids [C], probabilities [C]) most likely first."""
    v = probs.shape[0]
    if top_k > 0:
        k = min(top_k, v)
    else:
        k = min(_TOP_P_CANDIDATES, v) if top_p < 1.0 else v
    ids = np.argpartition(-probs, k - 1)[:k] if k < v else np.arange(v)
    ids = ids[np.argsort(-probs[ids], kind="stable")]  # [C] descending
    p = probs[ids]
    if top_p < 1.0:
        cum = np.cumsum(p) / (p.sum() if top_k > 0 else 1.0)  # within top-k renormalised, as HF does
        if top_k <= 0 and k < v and cum[-1] < top_p:  # nucleus wider than the candidates: sort all
            return nucleus(probs, v, top_p)
        keep = min(int(np.searchsorted(cum, top_p)) + 1, len(ids))  # smallest prefix reaching top_p
        ids, p = ids[:keep], p[:keep]
    return ids, p


def sample_row(logits: np.ndarray, config: GenerationConfig, rng: np.random.Generator) -> int:
    """logits: [V] (already penalised) -> one token id."""
    probs = softmax(logits / config.temperature)
    ids, p = nucleus(probs, config.top_k, config.top_p)
    cum = np.cumsum(p)
    pick = int(np.searchsorted(cum, rng.random() * cum[-1], side="right"))
    return int(ids[min(pick, len(ids) - 1)])


class Sampler:
    """Per-generator token choice; keeps the 'seen' mask for the repetition penalty.

    seen: [B, V] bool, updated in place as tokens are observed (no per-step reallocation).
    """

    def __init__(self, config: GenerationConfig, batch: int, vocab: int) -> None:
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.seen = np.zeros((batch, vocab), dtype=bool) if config.repetition_penalty != 1.0 else None

    def observe(self, token_ids: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Mark tokens as seen. token_ids: [B] or [B, T] (negative ids are padding, ignored)."""
        if self.seen is None:
            return
        ids = token_ids.reshape(token_ids.shape[0], -1)
        for b in range(ids.shape[0]) if rows is None else rows:
            row = ids[b]
            self.seen[b, row[(row >= 0) & (row < self.seen.shape[1])]] = True

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """logits: [B, V] -> next token ids [B] int64."""
        cfg = self.config
        if self.seen is not None:
            logits = np.array(logits, dtype=np.float32)  # own copy: penalised in place
            apply_repetition_penalty(logits, self.seen, cfg.repetition_penalty)
        if cfg.greedy:
            return logits.argmax(axis=-1).astype(np.int64)
        return np.array([sample_row(row, cfg, self.rng) for row in logits], dtype=np.int64)
