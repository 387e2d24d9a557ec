"""Preferences per row -> router_mix [B, K] on the host (hoe.core.routing: nearest anchors + convex weights).

Nothing is re-merged or rebuilt when a preference changes: only this [B, K] float32 input moves.
"""

from __future__ import annotations

import re

import numpy as np
from hoe.core.errors import PreferenceError
from hoe.core.routing import route, route_batch, validate_preference


class PreferenceRouter:
    """Anchors and n_route of one exported model; turns preferences into router_mix rows.

    A plain base export has no objectives: preferences must then be None and router_mix is [B, 0].
    """

    def __init__(self, objectives: list[str], anchors: list[list[float]], n_route: int) -> None:
        self.objectives = list(objectives)
        self.anchors = np.asarray(anchors, dtype=np.float64)  # [K, m]
        self.n_route = int(n_route)

    @classmethod
    def from_manifest(cls, manifest) -> PreferenceRouter:
        if not manifest.hoe_enabled:
            return cls([], [], 0)
        return cls(manifest.objectives, manifest.anchors, manifest.n_route)

    @property
    def enabled(self) -> bool:
        return bool(self.objectives)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def uniform(self) -> list[float]:
        return [1.0 / self.n_objectives] * self.n_objectives

    def rows(self, preference, batch: int) -> list[np.ndarray]:
        """One normalised preference [m] per row. `preference`: one vector for all rows, or B vectors."""
        if not self.enabled:
            if preference is not None:
                raise PreferenceError(f"this export has no experts (plain base model): expected preference None, "
                                      f"got {preference!r}")
            return [np.zeros(0)] * batch
        if preference is None:
            raise PreferenceError(f"a preference is required: {self.n_objectives} weights for "
                                  f"{self.objectives}, e.g. {[round(w, 3) for w in self.uniform()]}")
        arr = _as_array(preference)
        if arr.ndim == 2:
            if arr.shape[0] != batch:
                raise PreferenceError(f"got {arr.shape[0]} preferences for {batch} prompts; give one per prompt "
                                      "or a single preference for all")
            return [validate_preference(p, self.n_objectives) for p in arr]
        return [validate_preference(arr, self.n_objectives)] * batch

    def n_rows(self, preference) -> int:
        """1 for one vector (or None), B for [B, m] rows; PreferenceError when it is neither (ragged, text)."""
        if preference is None:
            return 1
        arr = _as_array(preference)
        return 1 if arr.ndim < 2 else arr.shape[0]

    def mix(self, preference: np.ndarray) -> np.ndarray:
        """One validated preference [m] -> router_mix [K] float32."""
        if not self.enabled:
            return np.zeros(0, dtype=np.float32)
        return route(preference, self.anchors, self.n_route).astype(np.float32)

    def route(self, preference, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The preference path of every caller: one vector for all `batch` rows, or one per row, validated
        once (`rows`) and routed once per distinct row -> (preferences [B, m] float64 normalised,
        router_mix [B, K] float32). A plain base export (preference None) gives [B, 0] and [B, 0]."""
        rows = np.asarray(self.rows(preference, batch), dtype=np.float64).reshape(batch, self.n_objectives)  # [B, m]
        if not self.enabled:
            return rows, np.zeros((batch, 0), dtype=np.float32)
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)  # [D, m], [B]
        return rows, route_batch(distinct, self.anchors, self.n_route)[inverse.reshape(-1)]  # [B, K]


def _as_array(preference) -> np.ndarray:
    try:
        arr = np.asarray(preference, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PreferenceError(f"preference must be numbers (one per objective) or a list of such rows, "
                              f"got {preference!r}") from e
    if arr.ndim not in (1, 2):
        raise PreferenceError(f"preference must be [m] or [B, m], got shape {arr.shape}")
    return arr


def parse_preference(text: str) -> list[float]:
    """'0.2,0.5,0.3' (or '0.2 0.5 0.3') -> [0.2, 0.5, 0.3] (CLI and chat `/pref`)."""
    parts = re.split(r"\s*,\s*|\s+", text.strip())
    try:
        if not text.strip() or any(not p for p in parts):
            raise ValueError("empty weight")
        return [float(x) for x in parts]
    except ValueError as e:
        raise PreferenceError(f"preference must be numbers separated by commas like 0.2,0.5,0.3, got {text!r}") from e
