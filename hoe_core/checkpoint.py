"""HoE checkpoint folder: `hoe.json` (HoEConfig), `experts.safetensors`, `routers.safetensors`.

Saved atomically (temporary folder, then rename); loaded from safetensors/JSON only; validated
against a base model with errors that name the module and both shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import names
from .atomic import staged_folder
from .config import HoEConfig
from .errors import CheckpointError, ShapeMismatchError
from .identity import base_identity, check_same_base

CONFIG_FILE, EXPERTS_FILE, ROUTERS_FILE = "hoe.json", "experts.safetensors", "routers.safetensors"


@dataclass
class HoECheckpoint:
    config: HoEConfig
    experts: dict[str, torch.Tensor]  # canonical names -> [E, r, in] / [E, out, r] / [E]
    routers: dict[str, torch.Tensor]  # canonical names -> [K, E, in] / [K, E], plus routers.mask [K, E]

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        """Write the folder atomically (hoe.core.atomic); an existing one only with `overwrite`."""
        folder = Path(folder)
        with staged_folder(folder, replace=overwrite) as tmp:
            self.config.save(tmp / CONFIG_FILE)
            save_file(_contiguous(self.experts), str(tmp / EXPERTS_FILE), metadata={"format": "pt"})
            save_file(_contiguous(self.routers), str(tmp / ROUTERS_FILE), metadata={"format": "pt"})
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> HoECheckpoint:
        folder = Path(folder)
        if not folder.is_dir():
            raise CheckpointError(f"HoE checkpoint folder not found: {folder}")
        config = HoEConfig.load(folder / CONFIG_FILE)
        return cls(config, load_tensors(folder / EXPERTS_FILE), load_tensors(folder / ROUTERS_FILE))

    def validate(self, base_model: nn.Module | None = None) -> None:
        """Check the tensors against the config and, if given, the base model (shapes and identity)."""
        cfg = self.config
        e, r, k = cfg.n_experts, cfg.rank, cfg.n_routers
        expected_keys = set(names.expert_names(cfg.target_modules)) | set(names.router_names(cfg.target_modules))
        have = set(self.experts) | set(self.routers)
        if have != expected_keys:
            raise CheckpointError(
                f"checkpoint tensors do not match hoe.json: missing {sorted(expected_keys - have)[:5]}, "
                f"unexpected {sorted(have - expected_keys)[:5]}"
            )
        _expect(names.ROUTER_MASK, self.routers[names.ROUTER_MASK], (k, e))
        for module in cfg.target_modules:
            d_out, d_in = self.experts[names.lora_b(module)].shape[1], self.experts[names.lora_a(module)].shape[2]
            if base_model is not None:
                linear = _base_linear(base_model, module)
                d_out, d_in = linear.out_features, linear.in_features
            _expect(names.lora_a(module), self.experts[names.lora_a(module)], (e, r, d_in))
            _expect(names.lora_b(module), self.experts[names.lora_b(module)], (e, d_out, r))
            _expect(names.scaling(module), self.experts[names.scaling(module)], (e,))
            _expect(names.router_weight(module), self.routers[names.router_weight(module)], (k, e, d_in))
            _expect(names.router_bias(module), self.routers[names.router_bias(module)], (k, e))
        for name, tensor in {**self.experts, **self.routers}.items():
            check_finite(name, tensor)
        if base_model is not None and cfg.base:
            check_same_base(cfg.base, base_identity(base_model), "hoe.json", "the given base")


def check_finite(name: str, tensor: torch.Tensor) -> None:
    """CheckpointError naming the tensor when it holds NaN or inf (a NaN expert silently empties the text)."""
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise CheckpointError(f"{name}: expected finite values, got {int(bad.sum())} NaN/inf of {tensor.numel()}")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def _expect(name: str, tensor: torch.Tensor, shape: tuple) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ShapeMismatchError(f"{name}: expected shape {tuple(shape)}, got {tuple(tensor.shape)}")


def _base_linear(model: nn.Module, module: str) -> nn.Linear:
    try:
        linear = model.get_submodule(module)
    except AttributeError as e:
        raise ShapeMismatchError(f"base model has no module {module}") from e
    linear = getattr(linear, "base", linear)  # already wrapped in a HoELinear
    if not isinstance(linear, nn.Linear):
        raise ShapeMismatchError(f"base module {module} is {type(linear).__name__}, expected nn.Linear")
    return linear
