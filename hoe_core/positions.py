"""Position ids from a left-padded attention mask: the one spelling for the reference, export validation,
the runtime and the benchmarks (torch-free; takes numpy arrays or torch tensors).

    mask [B, W]  0 0 1 1 1        position ids counting real tokens only; left padding gets 0
    positions    0 0 0 1 2
"""

from __future__ import annotations

import numpy as np


def positions(mask):
    """Position ids [B, W] int64 (numpy or torch, as given) of an attention mask [B, W]."""
    pos = mask.cumsum(-1) - 1
    if isinstance(pos, np.ndarray):
        return pos.clip(min=0).astype(np.int64)
    return pos.clamp(min=0).long()


def positions_from_mask(mask, new_tokens: int):
    """Position ids [B, new_tokens] of the last `new_tokens` columns of a mask [B, P+T]."""
    return positions(mask)[:, -new_tokens:]
