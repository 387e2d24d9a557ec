import numpy as np
import pytest
from hoe.core.errors import ConfigError, PreferenceError
from hoe.core.routing import (
    covering_anchors,
    nearest_anchors,
    route,
    route_batch,
    simplex_grid,
    simplex_lstsq,
    validate_preference,
)

VERTICES = np.eye(3)
WITH_CENTRE = np.vstack([np.eye(3), [1 / 3, 1 / 3, 1 / 3]])


@pytest.mark.parametrize("anchors", [VERTICES, WITH_CENTRE])
def test_exact_anchor_gives_one_hot(anchors):
    for k, anchor in enumerate(anchors):
        mix = route(anchor, anchors)
        expected = np.zeros(len(anchors))
        expected[k] = 1.0
        np.testing.assert_array_equal(mix, expected)


def test_vertex_anchors_reproduce_lambda():
    rng = np.random.default_rng(0)
    for _ in range(50):
        lam = rng.dirichlet(np.ones(3))
        np.testing.assert_allclose(route(lam, VERTICES), lam, atol=1e-12)


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_inside_hull_reconstructed(m):
    rng = np.random.default_rng(m)
    anchors = np.vstack([np.eye(m), rng.dirichlet(np.ones(m), size=3)])
    for _ in range(30):
        lam = rng.dirichlet(np.ones(m))
        mix = route(lam, anchors, n_route=len(anchors))  # hull of all anchors = the simplex
        assert np.all(mix >= 0)
        assert abs(mix.sum() - 1) < 1e-12
        np.testing.assert_allclose(mix @ anchors, lam, atol=1e-9)


def test_inside_hull_of_nearest_reconstructed():
    rng = np.random.default_rng(7)
    for _ in range(30):
        lam = rng.dirichlet(np.ones(3))
        chosen = nearest_anchors(lam, WITH_CENTRE, 3)
        mix = route(lam, WITH_CENTRE)
        # λ in the hull of the 3 nearest of {vertices, centre}: those 3 mix it; otherwise a nearby containing set
        in_hull = all(w >= -1e-12 for w in np.linalg.lstsq(
            np.vstack([WITH_CENTRE[chosen].T, np.ones(3)]), np.append(lam, 1), rcond=None)[0])
        if in_hull:
            assert set(np.flatnonzero(mix)) <= set(chosen)
        assert len(np.flatnonzero(mix)) <= 3
        np.testing.assert_allclose(mix @ WITH_CENTRE, lam, atol=1e-9)


@pytest.mark.parametrize("steps", [2, 4])
def test_covering_anchors_serve_every_preference_exactly(steps):
    """With the vertices + covering anchors, routing to at most m anchors reproduces every preference, and every
    non-vertex one puts weight on trained (non-vertex) anchors; the 3 nearest alone would miss 25% of them."""
    anchors = np.vstack([np.eye(3), covering_anchors(3, steps)])
    assert len(anchors) == {2: 7, 4: 16}[steps]
    rng = np.random.default_rng(steps)
    prefs = np.vstack([simplex_grid(3, 4), simplex_grid(3, 12), rng.dirichlet(np.ones(3), size=300)])
    missed_by_nearest = 0
    for lam in prefs:
        mix = route(lam, anchors)
        assert np.all(mix >= 0) and abs(mix.sum() - 1) < 1e-12 and len(np.flatnonzero(mix)) <= 3
        np.testing.assert_allclose(mix @ anchors, lam, atol=1e-9)
        if max(lam) < 1.0:
            assert mix[3:].sum() > 0, lam
        near = nearest_anchors(lam, anchors, 3)
        missed_by_nearest += np.linalg.norm(simplex_lstsq(anchors[near], lam) @ anchors[near] - lam) > 1e-9
    if steps == 2:
        assert missed_by_nearest > 0.1 * len(prefs)  # why route looks beyond the 3 nearest


def test_covering_anchors_and_grid():
    assert covering_anchors(3) == [[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]
    assert covering_anchors(2, 2) == [[0.5, 0.5]]
    assert len(simplex_grid(3, 4)) == 15 and simplex_grid(3, 4)[0] == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError):
        covering_anchors(1)


def test_outside_hull_is_best_convex_fit():
    anchors = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]])
    lam = np.array([1.0, 0.0, 0.0])
    mix = route(lam, anchors)
    best = np.linalg.norm(mix @ anchors - lam)
    rng = np.random.default_rng(1)
    for w in rng.dirichlet(np.ones(3), size=500):  # no random convex mix does better
        assert np.linalg.norm(w @ anchors - lam) >= best - 1e-12
    np.testing.assert_array_equal(mix, [1.0, 0.0, 0.0])


def test_only_n_nearest_anchors_used():
    mix = route([0.4, 0.4, 0.2], WITH_CENTRE, n_route=2)
    assert set(np.flatnonzero(mix)) <= {0, 3}  # the centre and (tie, lower index) vertex 0 are nearest
    # the 2 nearest (centre, vertex 0) do not hold [0.5, 0.5, 0]: the two vertices of its edge do
    np.testing.assert_allclose(route([0.5, 0.5, 0.0], WITH_CENTRE, n_route=2), [0.5, 0.5, 0, 0], atol=1e-12)


def test_normalises_and_batches():
    np.testing.assert_allclose(validate_preference([2, 6, 2], 3), [0.2, 0.6, 0.2])
    mix = route_batch([[1, 0, 0], [0.2, 0.5, 0.3]], VERTICES)
    assert mix.dtype == np.float32 and mix.shape == (2, 3)


def test_simplex_lstsq_single_point():
    np.testing.assert_array_equal(simplex_lstsq(np.array([[0.3, 0.7]]), np.array([1.0, 0.0])), [1.0])


@pytest.mark.parametrize(
    "pref, needle",
    [
        ([0.5, 0.5], "length 3"),
        ([0.5, -0.1, 0.6], ">= 0"),
        ([0.5, float("nan"), 0.5], "finite"),
        ([0.5, float("inf"), 0.5], "finite"),
        ([0, 0, 0], "positive sum"),
        ("abc", "3 numbers"),
    ],
)
def test_bad_preferences_raise_with_value(pref, needle):
    with pytest.raises(PreferenceError) as e:
        route(pref, VERTICES)
    assert needle in str(e.value)
    if isinstance(pref, list):
        assert str(pref[0]) in str(e.value)


def _containing_set_loop(pref, anchors, n):
    """The plain loop the table-driven search replaces: subsets of the 2n nearest, smallest first, nearest first."""
    import itertools

    cand = nearest_anchors(pref, anchors, 2 * n)
    dist = np.linalg.norm(anchors[cand] - pref, axis=1)
    best, best_cost = None, np.inf
    for size in range(1, n + 1):
        for subset in itertools.combinations(range(len(cand)), size):
            cost = dist[list(subset)].sum()
            idx = cand[list(subset)]
            pts = anchors[idx]
            kkt = np.block([[pts @ pts.T, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            if cost >= best_cost - 1e-12 or np.linalg.matrix_rank(kkt) < size + 1:
                continue
            w = np.linalg.solve(kkt, np.append(pts @ pref, 1.0))[:size]
            if w.min() >= -1e-12 and np.linalg.norm(w @ pts - pref) <= 1e-9:
                best, best_cost = (idx, w), cost
    return best


@pytest.mark.parametrize("m,steps", [(3, 2), (3, 4), (4, 2)])
def test_route_matches_the_plain_search(m, steps):
    """Routing through the cached solver table gives the plain loop's anchors and weights."""
    anchors = np.vstack([np.eye(m), covering_anchors(m, steps)])
    rng = np.random.default_rng(m * 10 + steps)
    searched = 0
    for pref in rng.dirichlet(np.ones(m), 400):
        mix = route(pref, anchors)
        near = nearest_anchors(pref, anchors, m)
        if np.linalg.norm(simplex_lstsq(anchors[near], pref) @ anchors[near] - pref) <= 1e-9:
            continue
        searched += 1
        idx, w = _containing_set_loop(pref, anchors, m)
        expected = np.zeros(len(anchors))
        expected[idx] = w
        np.testing.assert_allclose(mix, expected, atol=1e-12)
    assert searched > 20  # the search path itself was exercised
