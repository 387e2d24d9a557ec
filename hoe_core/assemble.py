"""Build a HoE checkpoint from a base model plus per-objective experts, with constant vertex routers."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .atomic import check_output
from .checkpoint import HoECheckpoint
from .config import HoEConfig, check_objectives
from .errors import ConfigError
from .experts import Expert, experts_from_peft, experts_from_task_vectors, stack_experts, task_vectors
from .identity import base_identity
from .routers import constant_routers, vertex_anchors


def in_features(model: nn.Module, modules: list[str]) -> dict[str, int]:
    return {m: model.get_submodule(m).in_features for m in modules}


def build_checkpoint(base: nn.Module, experts: list[Expert], modules: list[str], objectives: list[str],
                     expert_prefs=None, anchors=None, n_active: int = 0, routers=None,
                     expert_names: list[str] | None = None, rank: int | None = None) -> HoECheckpoint:
    """Stack experts and attach routers (default: one constant router per vertex of the simplex).

    expert_prefs default: expert i serves objective i alone (needs E == m).
    """
    m = len(objectives)
    if expert_prefs is None:
        if len(experts) != m:
            raise ConfigError(f"one expert per objective expected ({m} objectives), got {len(experts)} experts")
        expert_prefs = vertex_anchors(m)
    anchors = anchors if anchors is not None else vertex_anchors(m)
    stacked = stack_experts(experts, modules, rank)
    rank = stacked[f"experts.{modules[0]}.lora_A"].shape[1]
    config = HoEConfig(objectives=list(objectives), expert_prefs=[list(map(float, p)) for p in expert_prefs],
                       anchors=[list(map(float, a)) for a in anchors], target_modules=list(modules), rank=rank,
                       n_active=n_active, expert_names=list(expert_names or objectives[: len(experts)]),
                       base=base_identity(base))
    if routers is None:
        routers = constant_routers(modules, in_features(base, modules), config.expert_prefs, config.anchors,
                                   config.n_active)
    ckpt = HoECheckpoint(config, stacked, routers)
    ckpt.validate(base)
    return ckpt


def check_request(objectives, peft, finetuned, rank) -> None:
    """What `hoe assemble` can refuse without loading anything."""
    check_objectives(objectives)
    if bool(peft) == bool(finetuned):
        raise ConfigError("give either PEFT adapter folders or fine-tuned checkpoints, not both nor neither")
    sources = peft or finetuned
    if len(sources) != len(objectives):
        raise ConfigError(f"one expert folder per objective expected ({len(objectives)} objectives "
                          f"{objectives}), got {len(sources)} folders")
    if peft and rank is not None:
        raise ConfigError(f"--rank applies to --finetuned (task-SVD) only; PEFT adapters keep their own ranks, "
                          f"got --rank {rank}")
    if finetuned and (rank is None or isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"--rank must be a positive integer with --finetuned (task-SVD rank), got {rank!r}")


def assemble(base_dir: str | Path, objectives: list[str], out: str | Path, peft: list | None = None,
             finetuned: list | None = None, rank: int | None = None, force: bool = False) -> Path:
    """`hoe assemble`: PEFT adapters or fine-tuned checkpoints -> HoE checkpoint folder."""
    from .capability import probe_base
    from .gguf import resolve_base
    from .loading import check_safetensors_folder, load_base

    check_request(objectives, peft, finetuned, rank)
    inputs = [base_dir, *(peft or []), *(finetuned or [])]
    out = check_output(out, inputs, force)  # before the slow loads
    base_dir = resolve_base(base_dir)  # a .gguf file: its converted folder (cached)
    if peft:
        experts, modules = experts_from_peft(peft)
        probe_base(base_dir, modules)  # before the base weights load
    else:
        probe_base(base_dir)
    for folder in [base_dir, *(finetuned or [])]:
        check_safetensors_folder(folder)
    if peft:
        base = load_base(base_dir)
    else:
        from .model import find_target_modules

        base = load_base(base_dir)
        modules = find_target_modules(base)
        base_state = base.state_dict()
        deltas = [task_vectors(base_state, load_base(d).state_dict(), modules) for d in finetuned]
        experts = experts_from_task_vectors(deltas, rank)
    ckpt = build_checkpoint(base, experts, modules, objectives)
    return ckpt.save(out, overwrite=force)
