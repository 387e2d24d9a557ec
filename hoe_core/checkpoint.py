"""HoE checkpoint folder: `hoe.json` (HoEConfig), `experts.safetensors`, `routers.safetensors`.

Saved atomically (temporary folder, then rename); loaded from safetensors/JSON only; validated
against a base model with errors that name the module and both shapes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import names
from .config import HoEConfig
from .errors import CheckpointError, ShapeMismatchError
from .identity import base_identity

CONFIG_FILE, EXPERTS_FILE, ROUTERS_FILE = "hoe.json", "experts.safetensors", "routers.safetensors"


@dataclass
class HoECheckpoint:
    config: HoEConfig
    experts: dict[str, torch.Tensor]  # canonical names -> [E, r, in] / [E, out, r] / [E]
    routers: dict[str, torch.Tensor]  # canonical names -> [K, E, in] / [K, E], plus routers.mask [K, E]

    def save(self, folder: str | Path, overwrite: bool = False) -> Path:
        folder = Path(folder)
        if folder.exists() and not overwrite:
            raise CheckpointError(f"{folder} exists; pass overwrite=True (--force) to replace it")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp"))
        try:
            self.config.save(tmp / CONFIG_FILE)
            save_file(_contiguous(self.experts), str(tmp / EXPERTS_FILE), metadata={"format": "pt"})
            save_file(_contiguous(self.routers), str(tmp / ROUTERS_FILE), metadata={"format": "pt"})
            replace_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
        if base_model is not None and cfg.base:
            actual = base_identity(base_model)
            for key in ("architecture", "config_sha256", "shapes_sha256", "weights_sha256"):
                if key in cfg.base and cfg.base[key] != actual[key]:
                    raise CheckpointError(
                        f"this checkpoint was made for another base model: {key} is {cfg.base[key][:16]} "
                        f"in hoe.json, {actual[key][:16]} for the given base"
                    )


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` folder to `folder`, replacing an old one only once the new one is whole."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
