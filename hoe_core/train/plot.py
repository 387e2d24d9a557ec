"""Training curves: SFT loss per expert, router rewards per objective and the Tchebycheff value."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def plot_curves(records: list[dict], objectives: list[str], path: Path) -> Path | None:
    """One PNG, two panels. Returns None (with a log line) when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ModuleNotFoundError:
        log.warning("matplotlib not installed (pip install -e '.[plot]'): no training curves")
        return None
    fig, (ax_sft, ax_rl) = plt.subplots(1, 2, figsize=(11, 4))
    for stage in sorted({r["stage"] for r in records if r["stage"].startswith("expert:")}):
        loss = [r["loss"] for r in records if r["stage"] == stage]
        ax_sft.plot(range(len(loss)), loss, label=stage.removeprefix("expert:"))
    ax_sft.set(title="experts: SFT loss (best-of-n targets)", xlabel="step", ylabel="token NLL")
    ax_sft.legend()
    for stage in sorted({r["stage"] for r in records if r["stage"].startswith("router:")}):
        recs = [r for r in records if r["stage"] == stage]
        rewards = np.asarray([r["rewards"] for r in recs])  # [S, m]
        for i, name in enumerate(objectives):
            ax_rl.plot(rewards[:, i], label=f"{stage} {name}")
        ax_rl.plot([r["tchebycheff"] for r in recs], "k--", label=f"{stage} Tchebycheff")
    ax_rl.set(title="routers: mean reward of the sampled answers per step", xlabel="step", ylabel="reward")
    ax_rl.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
