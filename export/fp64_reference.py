"""A float64 PyTorch reference: the model's own (fp32) weights in double, with no step rounded to float32.

`model.double()` alone is not float64 throughout: Hugging Face's RMSNorm upcasts to float32 and casts
back, and the rotary embedding computes cos/sin in float32. Both would round every layer's input to
float32 precision and make the "exact" reference as noisy as the fp32 model it should judge.
`exact_float64` swaps those modules for float64 ones (same weights, eps, inv_freq and scaling).
Left in float32: hoe.core's router softmax (gates g ∈ [0,1], rounded relative 6e-8, scale only the
LoRA delta) — far below the fp32 noise of the base path this reference is meant to expose.

    fp32 export ─► ORT fp32 ─┐
                             ├─ both vs float64 reference: how far is each from the exact result?
    torch fp32 ──────────────┘
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

_DYNAMIC_ROPE = ("dynamic", "longrope")  # inv_freq changes with the sequence length: not swapped


class Float64RMSNorm(nn.Module):
    """y = w · x / sqrt(mean(x²) + eps), in the input's dtype (Hugging Face's computes in float32)."""

    def __init__(self, weight: nn.Parameter, eps: float) -> None:
        super().__init__()
        self.weight = weight
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., D]
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class Float64Rotary(nn.Module):
    """cos/sin of position·inv_freq computed in float64 from the model's own inv_freq buffer."""

    def __init__(self, rotary: nn.Module) -> None:
        super().__init__()
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):  # position_ids: [B,T] -> cos, sin [B,T,Dh]
        freqs = position_ids[..., None].double() * self.inv_freq.double()  # [B,T,Dh/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)


def exact_float64(model: nn.Module) -> dict[str, int]:
    """Cast `model` to float64 in place and swap its float32-computing RMSNorm/rotary modules.
    Returns how many of each were swapped."""
    model.double()
    swapped = {"rms_norm": 0, "rotary": 0}
    for name, module in list(model.named_modules()):
        if not name:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            setattr(parent, child, Float64RMSNorm(module.weight, module.variance_epsilon))
            swapped["rms_norm"] += 1
        elif hasattr(module, "inv_freq") and type(module).__name__.endswith("RotaryEmbedding"):
            if getattr(module, "rope_type", "default") in _DYNAMIC_ROPE:
                log.warning("%s: %s rope is left as is (float32 cos/sin)", name, module.rope_type)
                continue
            setattr(parent, child, Float64Rotary(module))
            swapped["rotary"] += 1
    return swapped
