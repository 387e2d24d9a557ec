"""Load a Hugging Face base model and a HoE checkpoint into a `HoEModel` (safetensors only, no pickle)."""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import HoECheckpoint
from .errors import CheckpointError
from .model import HoEModel

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_base(base_dir: str | Path, dtype: str = "fp32"):
    """A Hugging Face causal LM from a safetensors folder, in eval mode."""
    from transformers import AutoModelForCausalLM

    base_dir = Path(base_dir)
    if not (base_dir / "config.json").is_file():
        raise CheckpointError(f"base model folder {base_dir} lacks config.json")
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=DTYPES[dtype], use_safetensors=True)
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
