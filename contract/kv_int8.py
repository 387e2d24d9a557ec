"""The int8 KV cache of `hoe export --kv-cache int8` (docs/FORMAT.md "KV cache"), in numpy.

Each cached row (one token of one KV head) is D int8 values then their fp32 scale, D + 4 bytes:

    scale = max|x| / 127        q = x / scale rounded half to even (0 for a row of zeros)        x ≈ q · scale

symmetric per row, exactly as hoe's AttentionInt8 op writes it (runtime/csrc/attention.cc: both divide in fp32
and round half to even, so the same x gives the same bytes). The op attends a step's own tokens with their exact
fp32 k/v and stores them quantized; only the past is read back rounded. The PyTorch reference of such an export
(export/validate.py, the torch backend) does the same through `dequantize` and `quantize`.
"""

from __future__ import annotations

import numpy as np

DTYPE = "int8"  # kv_cache.dtype in hoe_config.json
SCALE_BYTES = 4


def in_manifest(manifest: dict) -> bool:
    """Whether an exported folder's manifest (hoe_config.json as a dict) declares an int8 KV cache."""
    return (manifest.get("kv_cache") or {}).get("dtype") == DTYPE


def row_width(head_dim: int) -> int:
    """Bytes per cached row: D values and the scale."""
    return head_dim + SCALE_BYTES


def quantize(x: np.ndarray) -> np.ndarray:
    """x [..., D] fp32 -> rows [..., D + 4] int8 (the values, then the scale's bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    scale = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127) if x.shape[-1] else x[..., :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.clip(np.rint(x / scale), -127, 127), 0).astype(np.int8)
    return np.concatenate([q, scale.astype(np.float32).view(np.int8)], axis=-1)


def scales(rows: np.ndarray) -> np.ndarray:
    """rows [..., D + 4] int8 -> each row's scale [..., 1] fp32."""
    return np.ascontiguousarray(rows[..., -SCALE_BYTES:]).view(np.float32)


def dequantize(rows: np.ndarray) -> np.ndarray:
    """rows [..., D + 4] int8 -> x [..., D] fp32 (q · scale)."""
    return rows[..., :-SCALE_BYTES].astype(np.float32) * scales(rows)


def as_float(kv: np.ndarray) -> np.ndarray:
    """A cache tensor as fp32 values: int8 rows dequantized, anything else as it is."""
    return dequantize(kv) if kv.dtype == np.int8 else kv


def append(past: np.ndarray, present: np.ndarray, steps: int) -> np.ndarray:
    """An int8 cache's next present: the past's rows [B,Hkv,P,D+4], then the last `steps` columns of a float
    present [B,Hkv,>=steps,D] quantized."""
    return np.concatenate([past, quantize(present[:, :, present.shape[2] - steps:])], axis=2)


def steps_apart(a: np.ndarray, b: np.ndarray) -> int:
    """The most two int8 caches of the same tokens differ by, in quantization steps of their values (a row whose
    scale differs counts its whole difference over the smaller scale)."""
    if a.size == 0:
        return 0
    scale = np.minimum(scales(a), scales(b))
    diff = np.abs(dequantize(a) - dequantize(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        steps = np.where(scale > 0, diff / scale, np.where(diff > 0, np.inf, 0))
    return int(np.ceil(steps.max() - 1e-3))
