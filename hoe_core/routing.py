"""Level 3 of HoE: preference routing. Pure numpy, no parameters, no torch.

    λ_usr ──► N nearest anchors ──► w = argmin_{w ≥ 0, Σw = 1} ‖Σ_k w_k λ^(k) − λ_usr‖² ──► router_mix [K]

`router_mix[k]` is the weight of router expert k; anchors not used get 0.
The runtime calls `route` once per preference change, on the host.

Where our routing differs from the paper's "N nearest anchors": with more anchors than vertices the N nearest
often do not contain λ_usr in their hull (7 covering anchors, N = 3: 25% of uniform random preferences, off by up
to 0.16), and their best convex fit then serves another preference. When that happens `route` uses, among the
2N nearest anchors, the set of at most N anchors that contains λ_usr with the smallest sum of distances to it
(an exact representation by near anchors); only when no such set exists (λ_usr outside the anchors' hull) does
it keep the N nearest's best convex fit. When the N nearest contain λ_usr, nothing changes.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .errors import ConfigError, PreferenceError

# Exact subset enumeration is used up to this many anchors (2^12 - 1 tiny solves).
_MAX_EXACT_ANCHORS = 12
_EXACT = 1e-9  # a convex fit this close to the preference in every coordinate represents it exactly


def validate_preference(preference: Sequence[float] | np.ndarray, n_objectives: int) -> np.ndarray:
    """Check that `preference` is a usable point of the simplex and return it normalised.

    Raises PreferenceError naming the expected and actual value when the length is wrong,
    a value is NaN/inf or negative, or the sum is not positive.
    """
    try:
        pref = np.asarray(preference, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise PreferenceError(f"preference must be a list of {n_objectives} numbers, got {preference!r}") from e
    if pref.ndim != 1 or pref.shape[0] != n_objectives:
        raise PreferenceError(
            f"preference must have length {n_objectives} (one weight per objective), "
            f"got shape {tuple(pref.shape)}: {pref.tolist()}"
        )
    values = pref.tolist()  # a few weights: Python's arithmetic beats numpy's per-call cost (same IEEE results)
    low, top = min(values), max(values)
    if not all(map(math.isfinite, values)):
        raise PreferenceError(f"preference must be finite, got {values}")
    if low < 0:
        raise PreferenceError(f"preference weights must be >= 0, got {values}")
    if top <= 0:
        raise PreferenceError(f"preference must have a positive sum, got {values} (sum {sum(values)})")
    scaled = [v / top for v in values]  # first by the largest weight: 1e308-sized weights would overflow the sum
    total = sum(scaled)
    return np.array([v / total for v in scaled])


def nearest_anchors(pref: np.ndarray, anchors: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` anchors nearest to `pref` (Euclidean); ties go to the lower index."""
    return _by_distance(_distances(pref, anchors))[:n]


def _by_distance(dist: np.ndarray) -> np.ndarray:
    """Anchor indices nearest first, ties to the lower index (the one order of nearest_anchors)."""
    return np.argsort(dist, kind="stable")


def _distances(pref: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """‖anchors[k] − pref‖ [K] (math.dist: the one distance of routing, `_Plan.distances` too)."""
    p = np.asarray(pref, dtype=np.float64).tolist()
    return np.array([math.dist(a, p) for a in np.asarray(anchors, dtype=np.float64).tolist()])


def _affine_lstsq(points: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, bool]:
    """min ‖pointsᵀ w − target‖ subject to Σw = 1 (no sign constraint), via the KKT system.

    points: [S, m], target: [m] -> (w: [S], unique: whether the points are affinely independent)
    """
    (linear, constant), unique = _affine_solver(points.tobytes(), points.shape)
    return linear @ target + constant, unique


@functools.lru_cache(maxsize=4096)
def _affine_solver(points: bytes, shape: tuple[int, int]) -> tuple[tuple[np.ndarray, np.ndarray], bool]:
    """The affine fit of `_affine_lstsq` is affine in the target: w = P·target + c, P [S, m], c [S] (from the
    KKT system's pseudo-inverse, so a dependent set gets lstsq's minimum-norm solution), cached per point set
    because the runtime routes against the same few anchor sets on every preference switch."""
    pts = np.frombuffer(points, dtype=np.float64).reshape(shape)
    s = shape[0]
    kkt = np.zeros((s + 1, s + 1))
    kkt[:s, :s] = pts @ pts.T
    kkt[:s, s] = kkt[s, :s] = 1.0
    lift = np.zeros((s + 1, shape[1] + 1))  # [target, 1] -> the KKT right-hand side [points @ target, 1]
    lift[:s, :-1], lift[s, -1] = pts, 1.0
    solve = (np.linalg.pinv(kkt) @ lift)[:s]
    linear, constant = np.ascontiguousarray(solve[:, :-1]), np.ascontiguousarray(solve[:, -1])
    for a in (linear, constant):
        a.setflags(write=False)
    return (linear, constant), bool(np.linalg.matrix_rank(kkt) == s + 1)


def _snap(w: list[float]) -> list[float]:
    """Round-off below 1e-12 to exact zeros, then renormalise (exact anchors give exact one-hots). A few
    weights: Python's arithmetic (one numpy call costs more)."""
    kept = [v if v >= 1e-12 else 0.0 for v in w]
    total = sum(kept)
    return [v / total for v in kept]


def simplex_lstsq(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Convex weights w (w ≥ 0, Σw = 1) minimising ‖Σ_k w_k points[k] − target‖.

    Fast path: when the points are affinely independent and the unconstrained affine fit is
    already convex (the target lies in their hull), it is the optimum. Otherwise, exactly: the
    optimum has its support on some subset, so every subset is solved on its affine hull and the
    best feasible one wins (smaller subsets win ties).
    points: [S, m], target: [m] -> w: [S]
    """
    s = points.shape[0]
    if s > _MAX_EXACT_ANCHORS:
        raise ConfigError(f"preference routing mixes at most {_MAX_EXACT_ANCHORS} anchors, got {s}")
    w_all, unique = _affine_lstsq(points, target)
    if unique and w_all.min() >= -1e-12:
        return np.array(_snap(w_all.tolist()))
    best_w, best_res = None, np.inf
    for size in range(1, s + 1):
        for subset in itertools.combinations(range(s), size):
            idx = list(subset)
            w_sub, _ = _affine_lstsq(points[idx], target)
            if np.any(w_sub < -1e-12):
                continue
            w = np.zeros(s)
            w[idx] = w_sub
            w = np.array(_snap(w.tolist()))
            res = float(np.linalg.norm(w @ points - target))
            if res < best_res - 1e-13:
                best_w, best_res = w, res
    return best_w


def route(
    preference: Sequence[float] | np.ndarray,
    anchors: Sequence[Sequence[float]] | np.ndarray,
    n_route: int | None = None,
) -> np.ndarray:
    """Router mixing weights for one preference.

    preference: [m]; anchors: [K, m] (each a point of the simplex); n_route: anchors mixed
    (default m). Returns router_mix: [K] float64, ≥ 0, summing to 1.
    """
    anchors = np.asarray(anchors, dtype=np.float64)
    if anchors.ndim != 2 or anchors.shape[0] == 0:
        raise ConfigError(f"anchors must be a non-empty [K, m] array, got shape {anchors.shape}")
    return route_normalised(validate_preference(preference, anchors.shape[1]), anchors, n_route)


def route_normalised(pref: np.ndarray, anchors: np.ndarray, n_route: int | None = None) -> np.ndarray:
    """`route` of a preference validate_preference already returned: pref [m], anchors [K, m] float64
    -> router_mix [K] float64 (hoe.core.preference routes each validated row once through this)."""
    m = anchors.shape[1]
    n = m if n_route is None else int(n_route)
    if n < 1:
        raise ConfigError(f"n_route must be >= 1, got {n}")
    plan = _plan(anchors.tobytes(), anchors.shape)
    p = pref.tolist()
    dist = plan.distances(p)  # [K]
    order = sorted(range(len(dist)), key=dist.__getitem__)  # nearest first, ties to the lower index
    chosen = order[:n]
    linear, constant, unique = plan.fit(tuple(chosen))
    if not unique:  # dependent points: a subset may still hold pref (simplex_lstsq searches them)
        weights = simplex_lstsq(anchors[chosen], pref).tolist()
    else:  # simplex_lstsq's own fast path when the affine fit is convex; else pref is in no subset either
        w = [sum(map(operator.mul, row, p)) + c for row, c in zip(linear, constant)]
        weights = _snap(w) if min(w) >= -1e-12 else None
    if weights is None or plan.misses(chosen, weights, p):
        found = _containing_set(pref, anchors, n, np.array(dist), np.array(order))
        if found is not None:
            chosen, weights = found
        elif weights is None:  # pref outside every near hull: the n nearest's best convex fit
            weights = simplex_lstsq(anchors[chosen], pref).tolist()
    mix = [0.0] * anchors.shape[0]
    for k, v in zip(chosen, weights):
        mix[k] = v
    return np.array(mix)


class _Plan:
    """One anchor set's routing arithmetic in plain Python floats: a switch routes a few anchors (K ≈ 7) of a
    few objectives (m ≈ 3), where one numpy call costs more than the arithmetic."""

    def __init__(self, anchors: np.ndarray) -> None:
        self.anchors = anchors  # [K, m]
        self.points = [tuple(a) for a in anchors.tolist()]
        self.fits: dict[tuple[int, ...], tuple[list, list, bool]] = {}  # chosen -> _affine_solver as lists

    def distances(self, p: list[float]) -> list[float]:
        """‖anchor_k − p‖ for every k, as `_distances`."""
        return [math.dist(a, p) for a in self.points]

    def fit(self, chosen: tuple[int, ...]) -> tuple[list, list, bool]:
        """The affine fit of `_affine_lstsq` over anchors `chosen`: (P rows [S][m], c [S], unique)."""
        found = self.fits.get(chosen)
        if found is None:
            pts = self.anchors[list(chosen)]
            (linear, constant), unique = _affine_solver(pts.tobytes(), pts.shape)
            found = self.fits[chosen] = (linear.tolist(), constant.tolist(), unique)
        return found

    def misses(self, chosen: list[int], weights: list[float], p: list[float]) -> bool:
        """Whether Σ_j weights_j·anchor_chosen[j] misses p by more than _EXACT in some coordinate."""
        columns = zip(*[self.points[k] for k in chosen])  # [m][S]
        return max(abs(sum(map(operator.mul, weights, col)) - y) for col, y in zip(columns, p)) > _EXACT


@functools.lru_cache(maxsize=64)
def _plan(anchors: bytes, shape: tuple[int, int]) -> _Plan:
    return _Plan(np.frombuffer(anchors, dtype=np.float64).reshape(shape))


def _containing_set(pref: np.ndarray, anchors: np.ndarray, n: int, dist: np.ndarray, order: np.ndarray):
    """(indices, convex weights) of the subset of at most n of the 2n nearest anchors that holds `pref` in its
    hull with the smallest sum of distances to it (ties: the smaller subset, then the nearer anchors); None
    when none does. Every subset is checked at once from a table built once per set of 2n nearest anchors, in a
    fixed handful of numpy calls (a preference switch runs this on the host).
    dist [K]: the anchors' distances to pref; order: _by_distance(dist)."""
    near = tuple(sorted(order[: 2 * n].tolist()))
    table = _subset_table(anchors.tobytes(), anchors.shape, n, near)
    s = len(table.size)
    rows = (table.linear @ pref + table.constant).reshape(-1, s)  # [n + 2m, S]: weights, then miss slacks
    holds = np.minimum.reduce(rows, axis=0) >= -1e-12  # [S]
    cost = np.where(holds, table.member @ dist, np.inf)  # [S]: sum of the members' distances
    best = int(cost.argmin())
    if cost[best] == np.inf:
        return None
    ties = (cost <= cost[best] + 1e-12).nonzero()[0]
    if len(ties) > 1:
        rank = np.empty(len(anchors) + 1, dtype=np.int64)
        rank[order] = np.arange(len(anchors))  # as nearest_anchors orders them
        rank[-1] = -1  # the padding index K counts as near and sorts first
        best = min(ties, key=lambda i: (table.size[i], sorted(rank[table.index[i]].tolist())))
    size = table.size[best]
    return table.index[best][:size], _snap(rows[:size, best].tolist())


class _Subsets(NamedTuple):
    """Every subset of at most n of the anchors `near`, padded to n with the index K: index [S, n] (members
    first), size [S], member [S, K] (0/1), and one map, affine in pref, to n + 2m rows per subset, laid out row
    by row over the subsets ([(n + 2m)·S] = linear @ pref + constant): its weights w_j (`_affine_solver`;
    padding 0), then _EXACT − 1e-12 ∓ miss_i (miss = Σ_j w_j·anchor_j − pref). A subset holds pref (w ≥ −1e-12
    and |miss| ≤ _EXACT) iff all its rows are ≥ −1e-12; an affinely dependent subset's weights are the
    constant −1, so it never does."""

    index: np.ndarray
    size: np.ndarray
    member: np.ndarray  # [S, K]
    linear: np.ndarray  # [(n + 2m)·S, m]
    constant: np.ndarray  # [(n + 2m)·S]


@functools.lru_cache(maxsize=1024)
def _subset_table(anchors: bytes, shape: tuple[int, int], n: int, near: tuple[int, ...]) -> _Subsets:
    k, m = shape
    pts = np.frombuffer(anchors, dtype=np.float64).reshape(shape)
    subsets = [c for size in range(1, min(n, len(near)) + 1) for c in itertools.combinations(near, size)]
    s = len(subsets)
    index = np.full((s, n), k)
    member = np.zeros((s, k))
    linear, constant = np.zeros((n + 2 * m, s, m)), np.zeros((n + 2 * m, s))
    constant[n:] = _EXACT - 1e-12
    for i, c in enumerate(subsets):
        index[i, :len(c)] = c
        member[i, list(c)] = 1.0
        (w_lin, w_const), unique = _affine_solver(pts[list(c)].tobytes(), (len(c), m))  # [size, m], [size]
        if not unique:  # a dependent subset holds pref in a smaller one, which the search has as well
            constant[:n, i] = -1.0
            continue
        linear[:len(c), i], constant[:len(c), i] = w_lin, w_const
        miss_lin, miss_const = pts[list(c)].T @ w_lin - np.eye(m), pts[list(c)].T @ w_const  # [m, m], [m]
        linear[n:n + m, i], constant[n:n + m, i] = -miss_lin, constant[n:n + m, i] - miss_const
        linear[n + m:, i], constant[n + m:, i] = miss_lin, constant[n + m:, i] + miss_const
    return _Subsets(index, np.array([len(c) for c in subsets]), member, linear.reshape(-1, m), constant.reshape(-1))


def simplex_grid(m: int, steps: int) -> list[list[float]]:
    """Every point of the simplex whose coordinates are multiples of 1/steps (m=3, steps=4: 15 points),
    vertices first in lexicographically decreasing order."""
    pts = [c for c in itertools.product(range(steps + 1), repeat=m) if sum(c) == steps]
    return [[v / steps for v in c] for c in sorted(pts, reverse=True)]


def covering_anchors(m: int, steps: int = 2) -> list[list[float]]:
    """Interior anchors that, with the m vertices, cover the simplex: the non-vertex points of the grid of step
    1/steps, plus the centre when the grid lacks it. m=3: steps=2 -> the 3 edge midpoints and the centre
    (7 anchors with the vertices); steps=4 -> 12 points (15 with the vertices).

    With these anchors and n_route = m, every point of a grid of step 1/(2·steps) or finer tested in
    tests/core/test_routing.py lies in the hull of its m nearest anchors, so routing reproduces it exactly
    and every non-vertex preference gets weight on trained anchors.
    """
    if m < 2 or steps < 1:
        raise ConfigError(f"covering anchors need m >= 2 objectives and steps >= 1, got m={m}, steps={steps}")
    out = [p for p in simplex_grid(m, steps) if max(p) < 1.0]
    centre = [1.0 / m] * m
    if not any(np.allclose(p, centre) for p in out):
        out.append(centre)
    return out


def route_batch(preferences, anchors, n_route: int | None = None) -> np.ndarray:
    """`route` for each row: preferences [B, m] -> router_mix [B, K] float32."""
    return np.stack([route(p, anchors, n_route) for p in preferences]).astype(np.float32)
