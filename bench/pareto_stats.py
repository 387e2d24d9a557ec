"""Uncertainty of the Pareto bench: a paired, seeded bootstrap over prompts, and the grid win fraction.

    per-prompt rewards R[s] : [G, n, m]  (system s, G grid preferences, n prompts, m objectives)
    resample b = 1..B       : idx_b = n prompt indices drawn with replacement (one draw shared by every system:
                              the systems answered the same prompts, so their differences are paired)
    point means             : R̄[s]_b = R[s][:, idx_b].mean(1)                       [G, m]
    hypervolume             : HV[s]_b = HV(R̄[s]_b, ref)                              (exact, hypervolume.py)
    interval                : ci95 = the 2.5th and 97.5th percentiles over b (percentile bootstrap)
    difference              : HV[hoe]_b − HV[static]_b, its percentiles likewise

The point estimates are those of the full prompt set (not bootstrap means). Everything is computed from the
per-prompt rewards exactly as stored in pareto.json (rounded), so `check_consistency` can recompute a file's
numbers from its own per-prompt rewards, bootstrap included (same seed, same draws).
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import ConfigError

from .hypervolume import hypervolume

DECIMALS = 6  # per-prompt rewards are stored (and all statistics computed) at this precision
COMPARISONS = {"hoe_minus_static": ("hoe", "static"), "hoe_minus_mod": ("hoe", "mod")}


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[B, n] prompt indices drawn with replacement (seeded, numpy's PCG64)."""
    if n < 1 or n_boot < 1:
        raise ConfigError(f"bootstrap needs n >= 1 prompts and n_boot >= 1 resamples, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def resampled_means(per_prompt: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """per_prompt [G, n, m], idx [B, n] -> point means per resample [B, G, m]."""
    return per_prompt[:, idx, :].mean(axis=2).transpose(1, 0, 2)


def interval(samples: np.ndarray) -> list[float]:
    """95% percentile interval of a sample along axis 0 -> [lo, hi] (or [[lo, hi], ...] for extra axes)."""
    lo, hi = np.percentile(samples, [2.5, 97.5], axis=0)
    return np.stack([lo, hi], axis=-1).round(DECIMALS).tolist()


def bootstrap_hypervolumes(per_prompt: dict[str, np.ndarray], ref, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Hypervolume of each system's front for each resample -> {system: [B]}."""
    return {s: np.array([hypervolume(means, ref) for means in resampled_means(r, idx)])
            for s, r in per_prompt.items()}


def scalarised(grid, points) -> np.ndarray:
    """Σ_i λ_i R_i per grid preference: grid [G, m], points [G, m] -> [G]."""
    return (np.asarray(grid, float) * np.asarray(points, float)).sum(axis=1)


def win_fraction(grid, a_points, b_points, tol: float = 1e-9) -> float:
    """Fraction of grid preferences λ where a's scalarised reward Σ λ_i R_i is >= b's (ties count as wins)."""
    shapes = {np.shape(grid), np.shape(a_points), np.shape(b_points)}
    if len(shapes) != 1 or len(grid) == 0:
        raise ConfigError(f"win fraction needs two non-empty fronts on one grid, got shapes {sorted(shapes)}")
    a, b = scalarised(grid, a_points), scalarised(grid, b_points)
    return float(np.mean(a >= b - tol))


def uncertainty(grid, per_prompt: dict[str, np.ndarray], ref, n_boot: int, seed: int) -> dict:
    """Bootstrap intervals and comparisons of the systems (per_prompt {system: [G, n, m]}, stored precision).

    -> {"hypervolume": {s: hv}, "hypervolume_ci95": {s: [lo, hi]}, "rewards_ci95": {s: [G][m][2]},
        "comparisons": {"hoe_minus_static": {"hv_diff", "ci95"}, ...}, "grid_wins_vs_static", ...}
    """
    n = {r.shape[1] for r in per_prompt.values()}
    if len(n) != 1:
        raise ConfigError(f"every system must be scored on the same prompts, got prompt counts {sorted(n)}")
    idx = resample_indices(n.pop(), n_boot, seed)
    means = {s: r.mean(axis=1) for s, r in per_prompt.items()}
    hv = {s: hypervolume(p, ref) for s, p in means.items()}
    boot = bootstrap_hypervolumes(per_prompt, ref, idx)
    out = {"hypervolume": {s: round(v, DECIMALS) for s, v in hv.items()},
           "hypervolume_ci95": {s: interval(b) for s, b in boot.items()},
           "rewards_ci95": {s: interval(resampled_means(r, idx)) for s, r in per_prompt.items()},
           "comparisons": {}}
    for key, (a, b) in COMPARISONS.items():
        if a in boot and b in boot:
            out["comparisons"][key] = {"hv_diff": round(hv[a] - hv[b], DECIMALS), "ci95": interval(boot[a] - boot[b])}
    if "hoe" in means and "static" in means:
        out["grid_wins_vs_static"] = round(win_fraction(grid, means["hoe"], means["static"]), DECIMALS)
        inner = [i for i, p in enumerate(grid) if max(p) < 1.0]
        if inner:
            out["grid_wins_vs_static_non_vertex"] = round(
                win_fraction([grid[i] for i in inner], means["hoe"][inner], means["static"][inner]), DECIMALS)
    return out


def rounded(per_prompt) -> np.ndarray:
    """Per-prompt rewards at the stored precision (what every statistic is computed from)."""
    return np.round(np.asarray(per_prompt, float), DECIMALS)


def check_consistency(data: dict, tol: float = 1e-6) -> list[str]:
    """Problems of a pareto.json against its own per-prompt rewards ([] when consistent).

    Checks each point's mean rewards, each system's hypervolume and interval, the comparisons and the win
    fractions, recomputed from `systems[s]["per_prompt_rewards"]` with the file's bootstrap settings.
    """
    systems, boot = data["systems"], data.get("bootstrap")
    if boot is None or any("per_prompt_rewards" not in s for s in systems.values()):
        return ["no per-prompt rewards / bootstrap settings in this pareto.json"]
    per_prompt = {s: rounded(v["per_prompt_rewards"]) for s, v in systems.items()}
    problems = []
    for s, v in systems.items():
        means = per_prompt[s].mean(axis=1)
        got = np.asarray([p["rewards"] for p in v["points"]], float)
        if got.shape != means.shape or np.abs(got - means).max() > tol:
            problems.append(f"{s}: point rewards are not the means of its per-prompt rewards")
    grid = [p["preference"] for p in systems["hoe"]["points"]] if "hoe" in systems else data["grid"]
    again = uncertainty(grid, per_prompt, data["reference_point"], boot["resamples"], boot["seed"])
    for s, v in systems.items():
        if abs(v["hypervolume"] - again["hypervolume"][s]) > tol:
            problems.append(f"{s}: hypervolume {v['hypervolume']} != {again['hypervolume'][s]} recomputed")
        if not np.allclose(v["hypervolume_ci95"], again["hypervolume_ci95"][s], atol=tol):
            problems.append(f"{s}: hypervolume_ci95 {v['hypervolume_ci95']} != {again['hypervolume_ci95'][s]}")
    for key, want in again["comparisons"].items():
        have = data.get("comparisons", {}).get(key)
        if have is None or abs(have["hv_diff"] - want["hv_diff"]) > tol or not np.allclose(have["ci95"], want["ci95"],
                                                                                             atol=tol):
            problems.append(f"comparisons.{key}: {have} != {want} recomputed")
    for key in ("grid_wins_vs_static", "grid_wins_vs_static_non_vertex"):
        if key in again and abs(data.get(key, -1.0) - again[key]) > tol:
            problems.append(f"{key}: {data.get(key)} != {again[key]} recomputed")
    return problems
