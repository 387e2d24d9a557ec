"""Plot of the Pareto bench: pairwise projections of each system's mean rewards over the preference grid, with
95% bootstrap intervals per point (error bars) when pareto.json has them."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STYLE = {"hoe": ("tab:red", "o", "HoE (trained routers)"), "static": ("tab:blue", "s", "static mixing"),
         "mod": ("tab:green", "^", "MOD logit mixing"), "experts": ("black", "*", "single experts"),
         "base": ("tab:gray", "X", "base")}


def _hv_ci(sys_: dict) -> str:
    ci = sys_.get("hypervolume_ci95")
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def plot_fronts(result: dict, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        log.warning("matplotlib not installed (pip install -e '.[plot]'): no pareto.png")
        return None
    objs = result["objectives"]
    pairs = list(itertools.combinations(range(len(objs)), 2))
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.4), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        for name, (color, marker, label) in STYLE.items():
            sys_ = result["systems"][name]
            pts = np.asarray([p["rewards"] for p in sys_["points"]])  # [G, m]
            size = 140 if name in ("experts", "base") else 36
            ax.scatter(pts[:, i], pts[:, j], c=color, marker=marker, s=size, alpha=0.75,
                       label=f"{label} (HV {sys_['hypervolume']:.3f}{_hv_ci(sys_)})")
            if "rewards_ci95" in sys_["points"][0]:  # 95% bootstrap intervals of each point's mean rewards
                ci = np.asarray([p["rewards_ci95"] for p in sys_["points"]])  # [G, m, 2]
                xerr = np.abs(ci[:, i].T - pts[:, i])
                yerr = np.abs(ci[:, j].T - pts[:, j])
                ax.errorbar(pts[:, i], pts[:, j], xerr=xerr, yerr=yerr, fmt="none", ecolor=color, alpha=0.35,
                            elinewidth=0.8)
        ax.set(xlabel=objs[i], ylabel=objs[j])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Mean reward on {result['n_prompts']} held-out prompts, {len(result['grid'])} preferences, "
                 f"greedy, {result['max_new_tokens']} new tokens; bars: 95% bootstrap intervals over prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
