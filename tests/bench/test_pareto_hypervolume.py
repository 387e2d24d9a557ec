"""Exact hypervolume on known point sets (2D and 3D), checked against hand values and Monte Carlo."""

import itertools

import numpy as np
import pytest
from hoe.bench.hypervolume import hv2d, hv3d, hypervolume, pareto_mask
from hoe.core.errors import ConfigError


def test_2d_known_values():
    assert hv2d([[1, 1]], [0, 0]) == 1.0
    # staircase: (1,3), (2,2), (3,1) -> 3 + 2 + 1 = 6 minus overlaps: union area = 1*3 + 1*2 + 1*1 = 6
    assert hv2d([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)
    # a dominated point and a duplicate change nothing
    assert hv2d([[1, 3], [2, 2], [3, 1], [1, 1], [2, 2]], [0, 0]) == pytest.approx(6.0)
    # points not beating the reference in every coordinate do not count
    assert hv2d([[0.5, 0.5], [2, -1]], [0, 0]) == pytest.approx(0.25)
    assert hv2d([], [0, 0]) == 0.0


def test_3d_known_values():
    assert hv3d([[1, 1, 1]], [0, 0, 0]) == 1.0
    assert hv3d([[2, 1, 1], [1, 2, 1]], [0, 0, 0]) == pytest.approx(3.0)  # 2 + 2 - 1
    # the three unit-axis boxes of size (2,1,1), (1,2,1), (1,1,2): 2+2+2 - 3 overlaps of 1 + 1 triple = 4
    assert hv3d([[2, 1, 1], [1, 2, 1], [1, 1, 2]], [0, 0, 0]) == pytest.approx(4.0)
    assert hv3d([[1, 1, 1]], [0.5, 0.5, 0.5]) == pytest.approx(0.125)


def test_3d_matches_monte_carlo():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0.2, 1.0, size=(12, 3))
    samples = rng.uniform(0, 1, size=(200_000, 3))
    dominated = np.zeros(len(samples), dtype=bool)
    for p in pts:
        dominated |= np.all(samples <= p, axis=1)
    assert hv3d(pts, [0, 0, 0]) == pytest.approx(dominated.mean(), abs=5e-3)


def test_3d_with_constant_z_equals_2d_times_height():
    pts2 = [[1, 3], [2, 2], [3, 1]]
    pts3 = [p + [0.5] for p in pts2]
    assert hv3d(pts3, [0, 0, 0]) == pytest.approx(0.5 * hv2d(pts2, [0, 0]))


def test_dispatch_and_errors():
    assert hypervolume([[3.0]], [1.0]) == 2.0
    with pytest.raises(ConfigError):
        hypervolume([[1, 1, 1, 1]], [0, 0, 0, 0])
    with pytest.raises(ConfigError):
        hv3d([[1, 1]], [0, 0, 0])


def test_pareto_mask():
    pts = [[1, 3], [2, 2], [3, 1], [1, 1], [2, 2]]
    assert pareto_mask(pts).tolist() == [True, True, True, False, True]
    grid = list(itertools.product([0, 1], repeat=2))
    assert pareto_mask(grid).tolist() == [False, False, False, True]
