"""The Pareto bench's bootstrap and win fraction on synthetic per-prompt rewards whose answers are known."""

import json

import numpy as np
import pytest
from hoe.bench import pareto_stats as ps
from hoe.core.errors import ConfigError
from hoe.train.recipe import default_out


def test_resampling_is_seeded_and_with_replacement():
    a, b = ps.resample_indices(50, 200, seed=3), ps.resample_indices(50, 200, seed=3)
    assert a.shape == (200, 50) and np.array_equal(a, b)
    assert not np.array_equal(a, ps.resample_indices(50, 200, seed=4))
    assert a.min() >= 0 and a.max() < 50
    assert any(len(set(row)) < 50 for row in a)  # drawn with replacement
    with pytest.raises(ConfigError, match="n_boot"):
        ps.resample_indices(5, 0, 0)


def test_bootstrap_of_a_mean_matches_the_normal_interval():
    """One objective, one point: HV = mean reward - ref, so its interval is the mean's: ±1.96·σ/√n."""
    rng = np.random.default_rng(0)
    n, sigma = 400, 0.1
    r = rng.normal(0.5, sigma, size=(1, n, 1))
    out = ps.uncertainty([[1.0]], {"hoe": r}, [0.0], n_boot=2000, seed=0)
    assert out["hypervolume"]["hoe"] == pytest.approx(r.mean(), abs=1e-6)
    lo, hi = out["hypervolume_ci95"]["hoe"]
    half = 1.96 * r.std(ddof=1) / np.sqrt(n)
    assert lo == pytest.approx(r.mean() - half, abs=0.15 * half)
    assert hi == pytest.approx(r.mean() + half, abs=0.15 * half)


def _systems(rng, n=60, delta=0.0, noise=0.05):
    """3 objectives, 6 grid points; 'hoe' = 'static' + delta on every reward; 'mod' = static + independent noise."""
    grid = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
    static = rng.uniform(0.3, 0.7, size=(len(grid), n, 3))
    return grid, {"hoe": static + delta, "static": static, "mod": static + rng.normal(0, noise, static.shape)}


def test_identical_systems_have_zero_difference_and_a_zero_interval():
    grid, pp = _systems(np.random.default_rng(1))
    out = ps.uncertainty(grid, {"hoe": pp["static"], "static": pp["static"]}, [0, 0, 0], n_boot=300, seed=0)
    assert out["comparisons"]["hoe_minus_static"] == {"hv_diff": 0.0, "ci95": [0.0, 0.0]}
    assert out["grid_wins_vs_static"] == 1.0  # ties count as wins


def test_a_uniform_shift_gives_a_positive_difference_excluding_zero():
    grid, pp = _systems(np.random.default_rng(2), delta=0.02)
    out = ps.uncertainty(grid, pp, [0, 0, 0], n_boot=500, seed=0)
    diff = out["comparisons"]["hoe_minus_static"]
    assert diff["hv_diff"] > 0 and diff["ci95"][0] > 0  # hoe dominates static on every prompt and point
    assert out["grid_wins_vs_static"] == 1.0 and out["grid_wins_vs_static_non_vertex"] == 1.0
    mod = out["comparisons"]["hoe_minus_mod"]
    assert mod["ci95"][0] <= mod["hv_diff"] <= mod["ci95"][1]
    # the paired interval of the difference is much narrower than either system's own interval
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(diff["ci95"]) < 0.5 * width(out["hypervolume_ci95"]["static"])


def test_pure_noise_difference_covers_zero():
    rng = np.random.default_rng(5)
    grid = [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    base = rng.uniform(0.3, 0.7, size=(3, 200, 2))
    pp = {"hoe": base + rng.normal(0, 0.05, base.shape), "static": base + rng.normal(0, 0.05, base.shape)}
    lo, hi = ps.uncertainty(grid, pp, [0, 0], n_boot=1000, seed=0)["comparisons"]["hoe_minus_static"]["ci95"]
    assert lo < 0 < hi


def test_point_intervals_bracket_the_means():
    grid, pp = _systems(np.random.default_rng(3))
    idx = ps.resample_indices(60, 400, 0)
    ci = np.asarray(ps.interval(ps.resampled_means(pp["static"], idx)))  # [G, m, 2]
    means = pp["static"].mean(1)
    assert ci.shape == (6, 3, 2) and np.all(ci[..., 0] < means) and np.all(means < ci[..., 1])


def test_win_fraction_counts_scalarised_wins():
    grid = [[1, 0], [0.5, 0.5], [0, 1], [0.25, 0.75]]
    a = [[0.6, 0.0], [0.5, 0.5], [0.0, 0.4], [0.4, 0.4]]
    b = [[0.5, 0.0], [0.4, 0.7], [0.0, 0.5], [0.4, 0.4]]
    # λ·a vs λ·b: 0.6>0.5 win, 0.5<0.55 loss, 0.4<0.5 loss, 0.4=0.4 tie (a win)
    assert ps.win_fraction(grid, a, b) == 0.5
    with pytest.raises(ConfigError, match="one grid"):
        ps.win_fraction(grid, a, b[:2])


def test_consistency_check_finds_edits():
    grid, pp = _systems(np.random.default_rng(4), delta=0.01)
    pp = {k: np.round(v, 6) for k, v in pp.items()}
    stats = ps.uncertainty(grid, pp, [0, 0, 0], 200, 7)
    data = {"grid": grid, "reference_point": [0, 0, 0], "bootstrap": {"resamples": 200, "seed": 7},
            "comparisons": stats["comparisons"], "grid_wins_vs_static": stats["grid_wins_vs_static"],
            "grid_wins_vs_static_non_vertex": stats["grid_wins_vs_static_non_vertex"],
            "systems": {s: {"hypervolume": stats["hypervolume"][s], "hypervolume_ci95": stats["hypervolume_ci95"][s],
                            "per_prompt_rewards": r.tolist(),
                            "points": [{"preference": g, "rewards": m.tolist()} for g, m in zip(grid, r.mean(1))]}
                        for s, r in pp.items()}}
    assert ps.check_consistency(data) == []
    bad = json.loads(json.dumps(data))
    for point in bad["systems"]["hoe"]["per_prompt_rewards"]:
        point[0][1] += 0.5
    problems = ps.check_consistency(bad)
    assert any("hoe: point rewards" in p for p in problems) and any("hoe: hypervolume" in p for p in problems)
    bad = json.loads(json.dumps(data))
    bad["comparisons"]["hoe_minus_static"]["ci95"][0] += 0.01
    assert ps.check_consistency(bad) == [f"comparisons.hoe_minus_static: {bad['comparisons']['hoe_minus_static']} != "
                                      f"{data['comparisons']['hoe_minus_static']} recomputed"]


def test_committed_pareto_json_is_consistent_with_its_per_prompt_rewards():
    data = json.loads((default_out() / "pareto.json").read_text())
    if "bootstrap" not in data:
        pytest.skip("the committed pareto.json predates per-prompt rewards (re-run `hoe bench pareto`); "
                    "the check runs on a generated pareto.json in test_pareto_bench.py::test_pareto_report")
    assert ps.check_consistency(data) == []


def test_pareto_cli_flags_override_the_defaults_only_when_given():
    from hoe.bench.pareto import ParetoConfig, config_from_args
    from hoe.cli.cli import build_parser

    args = build_parser().parse_args(["bench", "pareto", "--n-prompts", "3", "--bootstrap", "50", "--work", "w"])
    cfg = config_from_args(args)
    assert (cfg.n_prompts, cfg.bootstrap, cfg.work) == (3, 50, "w")
    default = ParetoConfig()
    assert (cfg.seed, cfg.grid_steps, cfg.max_new_tokens) == (default.seed, default.grid_steps, default.max_new_tokens)
    assert default.n_prompts == 0 and default.bootstrap >= 1000  # all held-out prompts, >= 1000 resamples
