"""Level 2 of HoE: router experts, stacked over anchors under canonical names (names.py).

Router expert k, for every adapted module, is a linear `W_k: [E, in]`, `b_k: [E]` giving logits
over the LoRA experts; `routers.mask[k]` keeps the N experts nearest its anchor (the rest get
gate mass exactly 0). A *constant* router has W = 0 and a bias that puts a fixed distribution on
the experts: it serves an anchor that the experts already span (e.g. a simplex vertex) without training.
"""

from __future__ import annotations

import numpy as np
import torch

from . import names
from .errors import ConfigError
from .routing import nearest_anchors, simplex_lstsq


def active_mask(expert_prefs, anchors, n_active: int) -> torch.Tensor:
    """[K, E] mask: for each anchor, the `n_active` experts whose preference is nearest to it."""
    prefs, anchors = np.asarray(expert_prefs, float), np.asarray(anchors, float)
    mask = torch.zeros(len(anchors), len(prefs))
    for k, anchor in enumerate(anchors):
        mask[k, nearest_anchors(anchor, prefs, n_active)] = 1.0
    return mask


def constant_distribution(expert_prefs, anchor, n_active: int) -> np.ndarray:
    """Gate distribution [E] of a constant router: the anchor written as a convex mix of its
    nearest experts' preferences (one-hot when the anchor is an expert's own preference)."""
    prefs = np.asarray(expert_prefs, float)
    idx = nearest_anchors(np.asarray(anchor, float), prefs, n_active)
    dist = np.zeros(len(prefs))
    dist[idx] = simplex_lstsq(prefs[idx], np.asarray(anchor, float))
    return dist


def constant_routers(
    modules: list[str], in_features: dict[str, int], expert_prefs, anchors, n_active: int,
    distributions: list | None = None,
) -> dict[str, torch.Tensor]:
    """Routers with zero weights whose softmax equals a fixed distribution per anchor, exactly on its support.

    distributions: [K][E] gate distributions (default: `constant_distribution` of each anchor).
    The mask of a constant router is the support of its distribution, so zeros stay exactly zero.
    """
    n_experts = len(expert_prefs)
    if distributions is None:
        distributions = [constant_distribution(expert_prefs, a, n_active) for a in anchors]
    dist = torch.tensor(np.asarray(distributions, float), dtype=torch.float64)  # [K, E]
    if dist.shape != (len(anchors), n_experts) or (dist < 0).any() or (dist.sum(1) - 1).abs().max() > 1e-6:
        raise ConfigError(f"distributions must be [K={len(anchors)}, E={n_experts}] simplex rows, got {dist.tolist()}")
    mask = (dist > 0).float()
    bias = torch.where(dist > 0, dist.clamp(min=1e-300).log(), torch.zeros_like(dist)).float()  # [K, E]
    out = {names.ROUTER_MASK: mask}
    for module in modules:
        out[names.router_weight(module)] = torch.zeros(len(anchors), n_experts, in_features[module])
        out[names.router_bias(module)] = bias.clone()
    return out


def trainable_routers(modules, in_features, expert_prefs, anchors, n_active, init_std=0.0, seed=0):
    """Routers to be trained: mask = N nearest experts, bias = log of the constant distribution
    (so training starts from static mixing), weights ~ N(0, init_std²)."""
    gen = torch.Generator().manual_seed(seed)
    dist = np.stack([constant_distribution(expert_prefs, a, n_active) for a in anchors])  # [K, E]
    bias = torch.tensor(np.log(np.maximum(dist, 1e-3)), dtype=torch.float32)
    out = {names.ROUTER_MASK: active_mask(expert_prefs, anchors, n_active)}
    for module in modules:
        shape = (len(anchors), len(expert_prefs), in_features[module])
        out[names.router_weight(module)] = torch.randn(shape, generator=gen) * init_std
        out[names.router_bias(module)] = bias.clone()
    return out


def vertex_anchors(n_objectives: int) -> list[list[float]]:
    return np.eye(n_objectives).tolist()
