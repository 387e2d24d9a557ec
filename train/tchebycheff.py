"""Tchebycheff scalarisation with online-mirror-descent objective weights, and leave-one-out advantages.

For an anchor λ and an ideal point z* (HOE_METHOD.md, level 2):

    maximise  min_i λ_i (R_i − z_i*)                                 (Tchebycheff; R ≤ z*, so ≤ 0)
    w_i ← w_i · exp(η · λ_i · (z_i* − R̄_i)),  w ← w / Σw             (OMD: weight moves to the worst-off)
    ∇J  = E[(Σ_i w_i A_i) ∇ log π(a|s)]                               (policy gradient on the weighted advantage)

The max-min is smoothed by OMD: w starts at λ and follows the objective whose weighted gap to z* is
largest, so the gradient pushes the worst-off objective, which is what the min does.
Our estimator is REINFORCE with a leave-one-out baseline (the paper uses PPO): a group of k answers per
prompt, A_i(answer j) = R_i(j) − mean_{l≠j} R_i(l), then (reward normalisation) divided per objective by the
standard deviation of that objective's rewards in the anchor's batch, so that w, not the objectives' very
different spreads (conciseness varies far more than relevance), decides which objective the gradient pushes:

    Â_i(j) = A_i(j) / (std_batch(R_i) + ε),    advantage(j) = Σ_i w_i Â_i(j)
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import ConfigError


def tchebycheff(lam, rewards, z_star) -> float:
    """min_i λ_i (R_i − z_i*) for mean rewards R [m]."""
    lam, rewards, z_star = (np.asarray(v, float) for v in (lam, rewards, z_star))
    return float(np.min(lam * (rewards - z_star)))


def omd_update(w, lam, rewards, z_star, eta: float) -> np.ndarray:
    """One mirror-descent step on the simplex: w_i ∝ w_i · exp(η λ_i (z_i* − R_i))."""
    w, lam, rewards, z_star = (np.asarray(v, float) for v in (w, lam, rewards, z_star))
    if not (w.shape == lam.shape == rewards.shape == z_star.shape):
        raise ConfigError(f"w, λ, R, z* must share one shape, got {w.shape}, {lam.shape}, {rewards.shape}, "
                          f"{z_star.shape}")
    logits = np.log(np.maximum(w, 1e-12)) + eta * lam * (z_star - rewards)
    logits -= logits.max()
    out = np.exp(logits)
    return out / out.sum()


def loo_advantages(rewards: np.ndarray) -> np.ndarray:
    """rewards [P, k, m] (k answers per prompt) -> advantages [P, k, m]: R − mean of the other k−1 answers."""
    rewards = np.asarray(rewards, float)
    if rewards.ndim != 3 or rewards.shape[1] < 2:
        raise ConfigError(f"rewards must be [P, k >= 2, m], got shape {rewards.shape}")
    k = rewards.shape[1]
    others = (rewards.sum(axis=1, keepdims=True) - rewards) / (k - 1)
    return rewards - others


def normalised_advantages(rewards: np.ndarray, eps: float = 1e-3) -> np.ndarray:
    """rewards [P, k, m] -> leave-one-out advantages divided by each objective's batch std, [P, k, m]."""
    adv = loo_advantages(rewards)
    std = np.asarray(rewards, float).reshape(-1, adv.shape[-1]).std(axis=0)  # [m]
    return adv / (std + eps)


def scalarised_advantages(rewards: np.ndarray, w, normalise: bool = False) -> np.ndarray:
    """rewards [P, k, m], OMD weights w [m] -> Σ_i w_i A_i (normalised per objective if asked), [P, k]."""
    adv = normalised_advantages(rewards) if normalise else loo_advantages(rewards)
    return adv @ np.asarray(w, float)
