"""Training curves: SFT loss per expert, and per trained anchor its router rewards and scalarised reward."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def smooth(values, window: int = 5) -> np.ndarray:
    """Trailing moving average (the first points average what there is)."""
    v = np.asarray(values, float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, len(v) + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def plot_curves(records: list[dict], objectives: list[str], path: Path, anchors: list[list[float]] | None = None
                ) -> Path | None:
    """One PNG: SFT losses, then one panel per trained anchor. Returns None (with a log line) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        log.warning("matplotlib not installed (pip install -e '.[plot]'): no training curves")
        return None
    steps = [r for r in records if r["stage"] == "routers" and "anchors" in r]
    n_anchor = len(steps[0]["anchors"]) if steps else 0
    cols = min(3, 1 + n_anchor)
    rows = math.ceil((1 + n_anchor) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    flat = list(axes.flat)
    _sft_panel(flat[0], records)
    for a in range(n_anchor):
        _anchor_panel(flat[1 + a], [r["anchors"][a] for r in steps], objectives,
                      anchors[a] if anchors else None)
    for ax in flat[1 + n_anchor:]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _sft_panel(ax, records: list[dict]) -> None:
    """SFT loss per expert; for experts reused with `--experts-from`, where they came from instead."""
    sft = sorted({r["stage"] for r in records if r["stage"].startswith("expert:")})
    for stage in sft:
        loss = [r["loss"] for r in records if r["stage"] == stage]
        ax.plot(range(len(loss)), loss, label=stage.removeprefix("expert:"))
    ax.set(title="experts: SFT loss (best-of-n targets)", xlabel="step", ylabel="token NLL")
    if sft:
        ax.legend(fontsize=7)
        return
    seeds = [r["experts_from"] for r in records if r["stage"] == "seed"]
    ax.axis("off")
    source = seeds[-1] if seeds else "an earlier run"
    ax.text(0.5, 0.5, f"experts reused from\n{source}\n(their SFT curves are in that run)", ha="center",
            va="center", fontsize=9, wrap=True, transform=ax.transAxes)


def _anchor_panel(ax, per_step: list[dict], objectives: list[str], anchor) -> None:
    """Mean sampled reward per objective and Σ λ_i R_i per step (faint: raw, solid: 5-step moving average);
    dashed: Σ λ_i R_i of the first step, i.e. of (almost) static mixing, where training starts."""
    rewards = np.asarray([r["rewards"] for r in per_step])  # [S, m]
    scal = np.asarray([r["scalarised"] for r in per_step])  # [S]
    x = np.arange(len(per_step))
    for i, name in enumerate(objectives):
        line, = ax.plot(x, smooth(rewards[:, i]), label=name)
        ax.plot(x, rewards[:, i], color=line.get_color(), alpha=0.25, linewidth=0.8)
    ax.plot(x, smooth(scal), "k", linewidth=2, label="Σ λ_i R_i")
    ax.plot(x, scal, "k", alpha=0.25, linewidth=0.8)
    ax.axhline(scal[0], color="k", linestyle="--", linewidth=0.8, label="start (static)")
    tch = [r["tchebycheff"] for r in per_step]
    label = "[" + ", ".join(f"{v:.2f}" for v in anchor) + "]" if anchor else ""
    ax.set(title=f"anchor {label}: Tchebycheff {np.mean(tch[:3]):.3f} → {np.mean(tch[-3:]):.3f}",
           xlabel="policy-gradient step", ylabel="mean sampled reward")
    ax.legend(fontsize=6)
