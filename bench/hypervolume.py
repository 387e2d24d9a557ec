"""Exact hypervolume (maximisation) of a point set above a reference point, in 1, 2 or 3 dimensions.

HV(P, r) = volume of ∪_{p ∈ P} [r, p], counting only points that beat r in every coordinate.
2D: sweep the points by decreasing x. 3D: slice along z: between consecutive z levels the dominated
region is the 2D region of the points at or above that level. Exact; O(n² log n) in 3D.
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import ConfigError


def _clean(points, ref) -> tuple[np.ndarray, np.ndarray]:
    pts, ref = np.asarray(points, float), np.asarray(ref, float)
    if pts.size == 0:
        return pts.reshape(0, ref.shape[0]), ref
    if pts.ndim != 2 or pts.shape[1] != ref.shape[0]:
        raise ConfigError(f"points must be [n, {ref.shape[0]}] to match the reference point, got {pts.shape}")
    return pts[np.all(pts > ref, axis=1)], ref


def hv2d(points, ref) -> float:
    pts, ref = _clean(points, ref)
    total, best_y = 0.0, ref[1]
    for x, y in sorted(map(tuple, pts), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            total += (x - ref[0]) * (y - best_y)
            best_y = y
    return total


def hv3d(points, ref) -> float:
    pts, ref = _clean(points, ref)
    if len(pts) == 0:
        return 0.0
    levels = np.unique(pts[:, 2])[::-1]  # decreasing z
    total = 0.0
    for i, z in enumerate(levels):
        lower = levels[i + 1] if i + 1 < len(levels) else ref[2]
        total += hv2d(pts[pts[:, 2] >= z][:, :2], ref[:2]) * (z - lower)
    return total


def hypervolume(points, ref) -> float:
    """Exact hypervolume for m = 1, 2 or 3 objectives."""
    m = np.asarray(ref, float).shape[0]
    if m == 1:
        pts, ref = _clean(points, ref)
        return float(pts[:, 0].max() - ref[0]) if len(pts) else 0.0
    if m == 2:
        return hv2d(points, ref)
    if m == 3:
        return hv3d(points, ref)
    raise ConfigError(f"hypervolume is implemented for 1-3 objectives, got {m}")


def pareto_mask(points) -> np.ndarray:
    """[n] bool: True where no other point is >= in every coordinate and > in one."""
    pts = np.asarray(points, float)
    keep = np.ones(len(pts), dtype=bool)
    for i, p in enumerate(pts):
        dominated = np.all(pts >= p, axis=1) & np.any(pts > p, axis=1)
        keep[i] = not dominated.any()
    return keep
