"""The one preference path: preferences -> validated rows [B, m] and router_mix [B, K] float32, on the host.

    router = PreferenceRouter.from_manifest(manifest)     # anchors and n_route of one exported model
    routed = router.prepare([0.2, 0.5, 0.3])              # validated and routed once (hoe.core.routing)
    rows, mix = routed.for_batch(batch)                   # the one "one, or one per prompt" count check
    rows, mix = router.route(preference, batch)           # both steps

The runtime (Generator, ChatSession, the CLI, hoe.serve), the benchmarks and export validation all go
through it; a `Routed` handed back to `prepare` is used as it is, so a preference set once (chat, the CLI's
early check) is not validated again. Nothing is re-merged or rebuilt when a preference changes: only this
[B, K] float32 input moves. Torch-free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import PreferenceError
from .routing import route_normalised, validate_preference


@dataclass(frozen=True)
class Routed:
    """A validated, routed preference: one row for every prompt (`shared`), or one row per prompt."""

    rows: np.ndarray  # [n, m] float64, normalised
    mix: np.ndarray  # [n, K] float32
    shared: bool  # one preference for all prompts (n == 1)

    def for_batch(self, batch: int, name: str = "preference") -> tuple[np.ndarray, np.ndarray]:
        """-> (rows [B, m], router_mix [B, K]); PreferenceError unless shared or one per prompt."""
        if self.shared:
            if batch == 1:  # a preference switch: copies, no repeat
                return self.rows.copy(), self.mix.copy()
            return np.repeat(self.rows, batch, axis=0), np.repeat(self.mix, batch, axis=0)
        n = self.rows.shape[0]
        if n != batch:
            raise PreferenceError(f"give one {name} for all prompts or one per prompt ({batch}), got {n} "
                                  f"preferences for {batch} prompts")
        return self.rows.copy(), self.mix.copy()

    def row(self, i: int) -> Routed:
        """The preference of prompt i alone (shared: itself)."""
        return self if self.shared else Routed(self.rows[i:i + 1], self.mix[i:i + 1], True)


class PreferenceRouter:
    """Anchors and n_route of one exported model; turns preferences into router_mix rows.

    A plain base export has no objectives: preferences must then be None and router_mix is [B, 0].
    """

    def __init__(self, objectives: list[str], anchors: list[list[float]], n_route: int) -> None:
        self.objectives = list(objectives)
        self.anchors = np.asarray(anchors, dtype=np.float64)  # [K, m]
        self.n_route = int(n_route)

    @classmethod
    def from_hoe(cls, hoe: dict) -> PreferenceRouter:
        """From the `hoe` section of hoe_config.json (export validation reads the manifest as a dict)."""
        if not hoe.get("enabled", True):
            return cls([], [], 0)
        objectives, anchors = hoe["objectives"], hoe["anchors"]
        return cls(objectives, anchors, hoe.get("n_route") or min(len(objectives), len(anchors)))

    @classmethod
    def from_manifest(cls, manifest) -> PreferenceRouter:
        """From a hoe.contract.folder.Manifest."""
        return cls.from_hoe(manifest.hoe)

    @property
    def enabled(self) -> bool:
        return bool(self.objectives)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def uniform(self) -> list[float]:
        return [1.0 / self.n_objectives] * self.n_objectives

    def prepare(self, preference) -> Routed:
        """Validate `preference` (one vector [m], rows [B, m], None for a plain base export) and route each
        distinct row once. A Routed is returned as it is."""
        if isinstance(preference, Routed):
            return self._check_routed(preference)
        if not self.enabled:
            if preference is not None:
                raise PreferenceError(f"this export has no experts (plain base model): expected preference None, "
                                      f"got {preference!r}")
            return Routed(np.zeros((1, 0)), np.zeros((1, 0), dtype=np.float32), True)
        if preference is None:
            raise PreferenceError(f"a preference is required: {self.n_objectives} weights for "
                                  f"{self.objectives}, e.g. {[round(w, 3) for w in self.uniform()]}")
        arr = _as_array(preference)
        if arr.ndim == 1 or len(arr) == 1:  # one preference (a switch): nothing to deduplicate
            row = validate_preference(arr if arr.ndim == 1 else arr[0], self.n_objectives)
            mix = route_normalised(row, self.anchors, self.n_route).astype(np.float32)
            return Routed(row[None], mix[None], arr.ndim == 1)
        rows = np.stack([validate_preference(p, self.n_objectives) for p in arr])  # [n, m]
        distinct, inverse = np.unique(rows, axis=0, return_inverse=True)  # [D, m], [n]
        mix = np.stack([route_normalised(p, self.anchors, self.n_route) for p in distinct]).astype(np.float32)
        return Routed(rows, mix[inverse.reshape(-1)], False)  # [n, m], [n, K]

    def route(self, preference, batch: int, name: str = "preference") -> tuple[np.ndarray, np.ndarray]:
        """One vector for all `batch` rows, or one per row -> (preferences [B, m] float64 normalised,
        router_mix [B, K] float32). A plain base export (preference None) gives [B, 0] and [B, 0]."""
        return self.prepare(preference).for_batch(batch, name)

    def rows(self, preference, batch: int) -> np.ndarray:
        """The validated rows [B, m] of `route`."""
        return self.route(preference, batch)[0]

    def mix(self, preference) -> np.ndarray:
        """One preference [m] -> router_mix [K] float32."""
        return self.route(preference, 1)[1][0]

    def _check_routed(self, routed: Routed) -> Routed:
        k = len(self.anchors) if self.enabled else 0
        if routed.rows.shape[1] != self.n_objectives or routed.mix.shape[1] != k:
            raise PreferenceError(f"a preference routed for {routed.rows.shape[1]} objectives and "
                                  f"{routed.mix.shape[1]} routers; this model has {self.n_objectives} and {k}")
        return routed


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
