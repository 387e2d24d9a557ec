"""Load a Hugging Face base model and a HoE checkpoint into a `HoEModel` (safetensors only, no pickle)."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import HoECheckpoint
from .errors import CheckpointError
from .model import HoEModel

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def check_safetensors_folder(base_dir: str | Path) -> Path:
    """A Hugging Face model folder with config.json and safetensors weights (pickle files are never loaded)."""
    base_dir = Path(base_dir)
    if not base_dir.is_dir():
        raise CheckpointError(f"base model folder not found: {base_dir}")
    if not (base_dir / "config.json").is_file():
        raise CheckpointError(f"base model folder {base_dir} lacks config.json")
    if not any(base_dir.glob("*.safetensors")):
        found = sorted(p.name for p in base_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        raise CheckpointError(f"{base_dir}: expected model weights as *.safetensors, found "
                              f"{found or 'none'}; convert pickle checkpoints to safetensors first")
    return base_dir


def load_base(base_dir: str | Path, dtype: str = "fp32"):
    """A Hugging Face causal LM from a safetensors folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    base_dir = check_safetensors_folder(base_dir)
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    try:
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=DTYPES[dtype], use_safetensors=True)
    except (OSError, ValueError) as e:  # unreadable config or weights: say which folder
        raise CheckpointError(f"{base_dir}: not a loadable Hugging Face causal LM ({e})") from e
    return model.eval()


def load_hoe(base_dir: str | Path, ckpt: str | Path | HoECheckpoint, dtype: str = "fp32") -> HoEModel:
    """Base + HoE checkpoint (a folder, or one already in memory), validated against each other."""
    from .capability import probe_base

    ckpt = ckpt if isinstance(ckpt, HoECheckpoint) else HoECheckpoint.load(ckpt)
    probe_base(base_dir, ckpt.config.target_modules)  # before the base weights load
    base = load_base(base_dir, dtype)
    ckpt.validate(base)
    return hoe_from_checkpoint(base, ckpt)


def hoe_from_checkpoint(base, ckpt: HoECheckpoint) -> HoEModel:
    dtype = next(base.parameters()).dtype
    cast = lambda d: {k: (v if k == "routers.mask" else v.to(dtype)) for k, v in d.items()}  # noqa: E731
    return HoEModel(base, ckpt.config, cast(ckpt.experts), cast(ckpt.routers))
