"""Plot of the Pareto bench: pairwise projections of each system's mean rewards over the preference grid."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

STYLE = {"hoe": ("tab:red", "o", "HoE (trained routers)"), "static": ("tab:blue", "s", "static mixing"),
         "mod": ("tab:green", "^", "MOD logit mixing"), "experts": ("black", "*", "single experts"),
         "base": ("tab:gray", "X", "base")}


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
            pts = np.asarray([p["rewards"] for p in result["systems"][name]["points"]])
            hv = result["systems"][name]["hypervolume"]
            size = 140 if name in ("experts", "base") else 36
            ax.scatter(pts[:, i], pts[:, j], c=color, marker=marker, s=size, alpha=0.75,
                       label=f"{label} (HV {hv:.3f})")
        ax.set(xlabel=objs[i], ylabel=objs[j])
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Mean reward on {result['n_prompts']} held-out prompts, {len(result['grid'])} preferences, "
                 f"greedy, {result['max_new_tokens']} new tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
