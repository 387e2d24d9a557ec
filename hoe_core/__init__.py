"""HoE reference: LoRA experts, router experts and preference routing on Hugging Face causal LMs.

Importing this package does not import torch; the torch parts live in submodules
(`experts`, `routers`, `model`, `checkpoint`, `loading`, `assemble`, `generate`).
"""

from .config import HoEConfig
from .errors import (
    BackendError,
    CheckpointError,
    ConfigError,
    HoEError,
    InputError,
    ParityError,
    PreferenceError,
    ShapeMismatchError,
    UnsupportedModelError,
)
from .routing import route, validate_preference

__all__ = [
    "BackendError",
    "CheckpointError",
    "ConfigError",
    "HoEConfig",
    "HoEError",
    "InputError",
    "ParityError",
    "PreferenceError",
    "ShapeMismatchError",
    "UnsupportedModelError",
    "route",
    "validate_preference",
]
