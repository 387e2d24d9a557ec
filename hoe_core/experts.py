"""Level 1 of HoE: LoRA experts, stacked per target module under canonical names (names.py).

Builders:
  * `experts_from_peft`      PEFT LoRA adapter folders (ranks may differ: zero-padded exactly)
  * `experts_from_finetuned` task-SVD of fully fine-tuned single-objective checkpoints
  * `merged_expert_factors`  Task Arithmetic / TIES merge of task vectors, then task-SVD
Every builder returns per-expert factors that `stack_experts` turns into the stacked tensors.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import names
from .errors import CheckpointError, ConfigError, ShapeMismatchError


@dataclass
class LoraFactors:
    """One expert on one module: ΔW = scaling · B·A, PEFT's meaning."""

    lora_a: torch.Tensor  # [r, in]
    lora_b: torch.Tensor  # [out, r]
    scaling: float  # alpha / r


log = logging.getLogger(__name__)

Expert = dict[str, LoraFactors]  # module name -> factors


def stack_experts(experts: list[Expert], modules: list[str], rank: int | None = None) -> dict[str, torch.Tensor]:
    """Stack E experts into canonical tensors, zero-padding every expert to a common rank.

    Padding with zero rows of A and zero columns of B leaves B·A unchanged exactly.
    """
    rank = rank or max(f.lora_a.shape[0] for e in experts for f in e.values())
    out: dict[str, torch.Tensor] = {}
    for module in modules:
        factors = []
        for i, expert in enumerate(experts):
            if module not in expert:
                raise ConfigError(f"expert {i} has no factors for module {module}")
            factors.append(expert[module])
        d_out, d_in = factors[0].lora_b.shape[0], factors[0].lora_a.shape[1]
        a = torch.zeros(len(experts), rank, d_in)
        b = torch.zeros(len(experts), d_out, rank)
        for i, f in enumerate(factors):
            r = f.lora_a.shape[0]
            if f.lora_a.shape[1] != d_in or f.lora_b.shape != (d_out, r) or r > rank:
                raise ShapeMismatchError(
                    f"{module}: expert {i} has A {tuple(f.lora_a.shape)}, B {tuple(f.lora_b.shape)}; "
                    f"expected A [r<={rank}, {d_in}] and B [{d_out}, r]"
                )
            a[i, :r] = f.lora_a.float()
            b[i, :, :r] = f.lora_b.float()
        out[names.lora_a(module)] = a
        out[names.lora_b(module)] = b
        out[names.scaling(module)] = torch.tensor([f.scaling for f in factors], dtype=torch.float32)
    return out


# ---------------------------------------------------------------------------- PEFT adapters


def read_peft_adapter(folder: str | Path) -> tuple[Expert, dict]:
    """Read a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).

    Returns factors keyed by the module name inside the causal LM ("model.layers.0.self_attn.q_proj").
    """
    folder = Path(folder)
    cfg_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    for p in (cfg_path, weights_path):
        if not p.is_file():
            raise CheckpointError(f"PEFT adapter folder {folder} lacks {p.name}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path} must hold a JSON object, got {type(cfg).__name__}")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{folder}: peft_type must be LORA, got {cfg.get('peft_type')}")
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise CheckpointError(f"{folder}: DoRA / rsLoRA adapters are not supported")
    from .checkpoint import load_tensors

    weights = load_tensors(weights_path)
    rank_pattern, alpha_pattern = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    expert: Expert = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        b_key = key.replace(".lora_A.", ".lora_B.")
        if b_key not in weights:
            raise CheckpointError(f"{folder}: {key} has no matching {b_key}")
        r = a.shape[0]
        alpha = pattern_value(alpha_pattern, module, cfg.get("lora_alpha", r))
        declared_r = pattern_value(rank_pattern, module, cfg.get("r", r))
        if declared_r != r:
            raise ShapeMismatchError(f"{folder}: {module} lora_A has rank {r}, config says {declared_r}")
        expert[module] = LoraFactors(a, weights[b_key], float(alpha) / r)
    if not expert:
        raise CheckpointError(f"{folder}: no lora_A/lora_B tensors found")
    return expert, cfg


def pattern_value(pattern: dict, module: str, default):
    """PEFT's own resolution of `rank_pattern` / `alpha_pattern` (peft.utils.other.get_pattern_key, 0.21):
    the first key, in the dict's order, that as a regex matches the whole module name or a dotted suffix of
    it (`(.*\\.)?(KEY)$`); `default` when none does."""
    for key in pattern:
        if re.match(rf"(.*\.)?({key})$", module):
            return pattern[key]
    return default


def experts_from_peft(folders: list[str | Path]) -> tuple[list[Expert], list[str]]:
    """Experts from PEFT adapter folders; all must adapt the same modules. -> (experts, modules)"""
    experts = [read_peft_adapter(f)[0] for f in folders]
    modules = sorted(experts[0])
    for f, e in zip(folders, experts):
        if sorted(e) != modules:
            missing = sorted(set(modules) ^ set(e))
            raise ConfigError(f"adapter {f} adapts other modules than {folders[0]}: differs on {missing[:5]}")
    return experts, modules


# ---------------------------------------------------------------------------- task-SVD


def task_svd(delta: torch.Tensor, rank: int) -> LoraFactors:
    """Best rank-`rank` approximation of `delta` [out, in] as LoRA factors (scaling 1).

    τ ≈ U_r Σ_r V_rᵀ, B = U_r Σ_r^{1/2}, A = Σ_r^{1/2} V_rᵀ (Σ split evenly between the factors).
    """
    if rank < 1:
        raise ConfigError(f"rank should be a positive integer, got {rank}")
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    r = min(rank, s.shape[0])
    if r < rank:
        log.warning("task-SVD rank %d > min(out, in) = %d of a [%d, %d] delta: using rank %d (exact)", rank,
                    s.shape[0], *delta.shape, r)
    root = s[:r].sqrt()
    a = root[:, None] * vh[:r]  # [r, in]
    b = u[:, :r] * root[None, :]  # [out, r]
    return LoraFactors(a.float(), b.float(), 1.0)


def task_vectors(base_state: dict, finetuned_state: dict, modules: list[str]) -> dict[str, torch.Tensor]:
    """τ = θ_ft − θ_pre for each target module's weight."""
    deltas = {}
    for module in modules:
        key = f"{module}.weight"
        if key not in finetuned_state:
            raise CheckpointError(f"fine-tuned checkpoint lacks {key}")
        if finetuned_state[key].shape != base_state[key].shape:
            raise ShapeMismatchError(
                f"{key}: fine-tuned shape {tuple(finetuned_state[key].shape)} != base {tuple(base_state[key].shape)}"
            )
        deltas[module] = finetuned_state[key].double() - base_state[key].double()
    return deltas


def experts_from_task_vectors(deltas: list[dict[str, torch.Tensor]], rank: int) -> list[Expert]:
    return [{m: task_svd(d, rank) for m, d in tv.items()} for tv in deltas]


# ---------------------------------------------------------------------------- merging


def task_arithmetic(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """Σ_i w_i τ_i."""
    return sum(w * d for w, d in zip(weights, deltas))


def ties_merge(deltas: list[torch.Tensor], weights: list[float], density: float = 0.2) -> torch.Tensor:
    """TIES: trim each τ_i to its top-`density` magnitudes, elect a sign per entry from Σ w_i τ̂_i,
    then average the weighted entries that agree with the elected sign (disjoint mean)."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    trimmed = []
    for d in deltas:
        k = max(1, int(round(density * d.numel())))
        threshold = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= threshold, d, torch.zeros_like(d)))
    weighted = torch.stack([w * t for w, t in zip(weights, trimmed)])  # [n, out, in]
    sign = torch.sign(weighted.sum(0))
    agree = (torch.sign(weighted) == sign) & (weighted != 0)
    count = agree.sum(0).clamp(min=1)
    return (weighted * agree).sum(0) / count


MERGES = {"task_arithmetic": task_arithmetic, "ties": ties_merge}


def merged_expert(deltas: list[dict[str, torch.Tensor]], weights: list[float], rank: int, method: str = "ties",
                  **kwargs) -> Expert:
    """A mixed-objective expert: merge the task vectors module by module, then task-SVD."""
    if method not in MERGES:
        raise ConfigError(f"merge method must be one of {sorted(MERGES)}, got {method!r}")
    if len(weights) != len(deltas):
        raise ConfigError(f"merge needs one weight per task vector ({len(deltas)}), got {len(weights)}")
    merge = MERGES[method]
    return {m: task_svd(merge([tv[m] for tv in deltas], weights, **kwargs), rank) for m in deltas[0]}
