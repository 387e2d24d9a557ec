"""Row surgery on a batch's K/V cache (host arrays, as Backend.read_kv gives them), for continuous batching.

A batch's cache is 2 * L arrays [B, H, P, D] (per layer key, value). Rows are right-aligned in time: a row
with n real tokens holds them in the last n columns and its attention mask is 0 on the columns before.

    kv = select_rows(kv, [0, 2])            # rows leave:  [B, H, P, D] -> [2, H, P, D]
    kv = concat_rows([kv, kv_new])          # rows join:   left-pad the shorter past with zeros, stack rows
    kv = trim_left(kv, n)                   # drop the first n columns (masked for every row left)
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import InputError


def select_rows(kv: list[np.ndarray], rows) -> list[np.ndarray]:
    """Keep `rows` (indices, in this order) of every array."""
    idx = np.asarray(rows, dtype=np.int64)
    b = kv[0].shape[0] if kv else 0
    if idx.size and (idx.min() < 0 or idx.max() >= b):
        raise InputError(f"select_rows: rows must be in [0, {b}), got {idx.tolist()}")
    return [a[idx] for a in kv]


def concat_rows(groups: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Stack the rows of several caches; a shorter past is left-padded with zeros up to the longest one."""
    groups = [g for g in groups if g and g[0].shape[0] > 0]
    if not groups:
        raise InputError("concat_rows: expected at least one cache with rows, got none")
    if len({len(g) for g in groups}) != 1:
        raise InputError(f"concat_rows: caches hold different numbers of arrays {[len(g) for g in groups]}")
    width = max(g[0].shape[2] for g in groups)
    out = []
    for arrays in zip(*groups):
        _check_compatible(arrays)
        out.append(np.concatenate([_left_pad(a, width) for a in arrays], axis=0))  # [sum B, H, width, D]
    return out


def trim_left(kv: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Drop the first `n` time columns of every array."""
    p = kv[0].shape[2] if kv else 0
    if not 0 <= n <= p:
        raise InputError(f"trim_left: n must be in [0, {p}], got {n}")
    return kv if n == 0 else [np.ascontiguousarray(a[:, :, n:]) for a in kv]


def _left_pad(a: np.ndarray, width: int) -> np.ndarray:
    """[B, H, P, D] -> [B, H, width, D], zeros first."""
    pad = width - a.shape[2]
    if pad == 0:
        return a
    return np.concatenate([np.zeros(a.shape[:2] + (pad,) + a.shape[3:], dtype=a.dtype), a], axis=2)


def _check_compatible(arrays) -> None:
    heads = {(a.shape[1], a.shape[3], a.dtype) for a in arrays}
    if len(heads) != 1 or any(a.ndim != 4 for a in arrays):
        raise InputError(f"concat_rows: caches differ in heads/head_dim/dtype {sorted(map(str, heads))}; "
                         "expected arrays [B, H, P, D] of one model")
