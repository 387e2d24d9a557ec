"""hoe's int4 linear kernel's weight layout (runtime/csrc/linear.h): a MatMulNBits weight, the same numbers.

    pack(q) -> uint8 [ceil(N/64), ceil(K/32), 1280]

For each 64 output columns and 32 inputs: 1024 bytes of levels (4 slices of 16 columns, each 4 vectors of 64
bytes; byte 4c + t of vector j holds column c's level of input 8j + t in its low nibble, of input 8j + 4 + t in
its high one), then the 64 columns' fp32 scales. Padding columns and inputs hold level 8 (zero) and scale 0. A
block of 64, 128, ... inputs becomes its 32-input parts, each with the block's scale, so the kernel computes
exactly (q − 8) · scale, the MatMulNBits weight (BlockQuant.dequantize).
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import ConfigError

from .quantize import BlockQuant

COLUMNS, INPUTS = 64, 32  # kLinearColumns, kLinearInputs
STRIDE = COLUMNS * INPUTS // 2 + 4 * COLUMNS  # kLinearStride: bytes per (group, part)


def packable(q: BlockQuant) -> bool:
    """Whether the kernel computes this weight: symmetric int4, blocks of whole parts, float32 scales."""
    return (q.bits == 4 and q.zero_points is None and q.offsets is None and q.block_size % INPUTS == 0
            and q.scales.dtype == np.float32)


def pack(q: BlockQuant) -> np.ndarray:
    """A MatMulNBits weight in the kernel's layout (module docstring)."""
    if not packable(q):
        raise ConfigError(f"hoe's int4 linear kernel takes symmetric int4 weights with float32 scales in blocks of a "
                          f"multiple of {INPUTS}, got {q.bits} bits, block {q.block_size}, scales {q.scales.dtype}, "
                          f"zero points {q.zero_points is not None}, offsets {q.offsets is not None}")
    groups, parts = -(-q.n // COLUMNS), -(-q.k // INPUTS)
    levels = np.full((groups * COLUMNS, parts * INPUTS), 8, dtype=np.uint8)
    levels[: q.n, : q.k] = q.levels()[:, : q.k]
    scales = np.zeros((groups * COLUMNS, parts), dtype=np.float32)
    scales[: q.n] = np.repeat(q.scales, q.block_size // INPUTS, axis=1)[:, :parts]
    # [g, slice, c, p, j, nibble, t] -> bytes [g, p, slice, j, c, t]
    l7 = levels.reshape(groups, 4, 16, parts, 4, 2, 4)
    packed = (l7[..., 0, :] | (l7[..., 1, :] << 4)).transpose(0, 3, 1, 4, 2, 5).reshape(groups, parts, -1)
    tail = scales.reshape(groups, COLUMNS, parts).transpose(0, 2, 1).copy().view(np.uint8)
    return np.ascontiguousarray(np.concatenate([packed, tail], axis=2))
