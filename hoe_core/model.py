"""Levels 1–2 of HoE inside a Hugging Face causal LM: every target `nn.Linear` becomes a `HoELinear`.

One forward pass per token; the preference arrives as `router_mix: [B, K]` (see routing.py).
Expert and router tensors live in one flat dict under their canonical names (names.py), so the
same module runs from a checkpoint (reference) or from graph inputs (ONNX export).
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from . import names
from .errors import ConfigError, UnsupportedModelError


def routed_gates(x: torch.Tensor, weight, bias, mask, router_mix) -> torch.Tensor:
    """Token gates over the LoRA experts of one module.

        x [B,T,in] ─► router logits [B,T,K,E] = x·Wᵀ + b ─► inactive experts → −inf ─► softmax_E (fp32)
                  ─► g [B,T,E] = Σ_k router_mix[b,k] · p[b,t,k,:]

    weight: [K,E,in], bias: [K,E], mask: [K,E] (1 = active), router_mix: [B,K] -> g: [B,T,E] fp32
    """
    k, e, d_in = weight.shape
    logits = F.linear(x, weight.reshape(k * e, d_in), bias.reshape(k * e))  # [B,T,K*E]
    logits = logits.unflatten(-1, (k, e)).float()  # [B,T,K,E]
    logits = torch.where(mask > 0, logits, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [B,T,K,E], exactly 0 outside the mask
    return (probs * router_mix.float()[:, None, :, None]).sum(dim=2)  # [B,T,E]


def lora_mixture(x: torch.Tensor, lora_a, lora_b, scaling, gates) -> torch.Tensor:
    """Σ_j g_j · s_j · B_j A_j x, stacked along the rank axis: two matmuls whatever E is.

        x [B,T,in] ─► h = x·A_catᵀ [B,T,E·r] ─► h ⊙ repeat(g·s, r) ─► Δy = h·B_catᵀ [B,T,out]

    lora_a: [E,r,in], lora_b: [E,out,r], scaling: [E], gates: [B,T,E] -> [B,T,out]
    """
    e, r, d_in = lora_a.shape
    h = F.linear(x, lora_a.reshape(e * r, d_in))  # [B,T,E*r]
    weight = (gates * scaling.float()).to(x.dtype)  # [B,T,E]
    h = (h.unflatten(-1, (e, r)) * weight[..., None]).flatten(-2)  # [B,T,E*r]
    b_cat = lora_b.permute(1, 0, 2).reshape(lora_b.shape[1], e * r)  # [out,E*r]
    return F.linear(h, b_cat)


class HoEState:
    """What all HoELinear modules of one model read during a forward: the tensors and the mix.

    Per call, never on the shared module: the values live in a ContextVar, so each thread (and each
    asyncio task) sees only what its own forward bound, and one model may serve several threads at once.
    """

    def __init__(self) -> None:
        self._call: contextvars.ContextVar = contextvars.ContextVar(f"hoe_state_{id(self)}", default=({}, None))

    @contextlib.contextmanager
    def bind(self, tensors: dict[str, torch.Tensor], router_mix: torch.Tensor):
        """tensors (canonical names) and router_mix [B, K] for the forward run inside this block."""
        token = self._call.set((tensors, router_mix))
        try:
            yield
        finally:
            self._call.reset(token)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return self._call.get()[0]

    @property
    def router_mix(self) -> torch.Tensor | None:  # [B, K]
        return self._call.get()[1]


class HoELinear(nn.Module):
    """O(x) = W_pre·x + Σ_j g_j(x)·(α_j/r_j)·B_j·A_j·x, with the base linear kept frozen."""

    def __init__(self, base: nn.Linear, module_name: str, state: HoEState) -> None:
        super().__init__()
        self.base = base
        self.module_name = module_name
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, name = self.state.tensors, self.module_name
        gates = routed_gates(
            x, t[names.router_weight(name)], t[names.router_bias(name)], t[names.ROUTER_MASK], self.state.router_mix
        )
        delta = lora_mixture(x, t[names.lora_a(name)], t[names.lora_b(name)], t[names.scaling(name)], gates)
        return self.base(x) + delta


def check_supported(model: nn.Module) -> None:
    """The config-only part of the capability probe (hoe.core.capability; the full probe runs before loading)."""
    from .capability import check_config

    check_config(model.config)


def find_target_modules(model: nn.Module, patterns: list[str] | None = None) -> list[str]:
    """Full names of the linears to adapt: by default every nn.Linear inside the decoder blocks.

    `patterns` are PEFT-style short names ("q_proj") matched against the last name component.
    """
    from .capability import decoder_blocks

    check_supported(model)
    prefix = decoder_blocks(model) + "."
    found, others = [], {}
    for name, module in model.named_modules():
        if not name.startswith(prefix):
            continue
        short = name.rsplit(".", 1)[-1]
        if patterns is not None and short not in patterns:
            continue
        if isinstance(module, nn.Linear):
            found.append(name)
        elif patterns is not None:
            raise UnsupportedModelError(
                f"module {name} is {type(module).__name__}; only nn.Linear projections can be adapted"
            )
        elif _is_projection(module):
            others.setdefault(type(module).__name__, name)
    if not found:
        kinds = ", ".join(f"{k} (e.g. {v})" for k, v in others.items()) or "none"
        raise UnsupportedModelError(f"{type(model).__name__}: no nn.Linear target modules in {prefix[:-1]} for "
                                    f"patterns {patterns}; projection modules found: {kinds}")
    return found


def target_linear(model: nn.Module, name: str) -> nn.Linear:
    """The nn.Linear `name` of `model`, or an UnsupportedModelError naming what is there instead."""
    try:
        module = model.get_submodule(name)
    except AttributeError as e:
        raise UnsupportedModelError(f"{type(model).__name__} has no module {name}") from e
    if not isinstance(module, nn.Linear):
        raise UnsupportedModelError(f"target {name} is {type(module).__name__}; only nn.Linear projections "
                                    "can be adapted")
    return module


def _is_projection(module: nn.Module) -> bool:
    """A leaf with a 2-D weight that is not an embedding: what an adapter would target."""
    weight = getattr(module, "weight", None)
    return (not list(module.children()) and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and not isinstance(module, nn.Embedding))


class HoEModel(nn.Module):
    """A frozen Hugging Face causal LM with HoE linears; forward takes `router_mix: [B, K]`.

    Expert tensors are frozen buffers; router tensors are parameters (what router training moves).
    """

    def __init__(self, base_model: nn.Module, config, experts: dict, routers: dict) -> None:
        super().__init__()
        check_supported(base_model)
        self.config = config  # HoEConfig
        self.model = base_model.eval().requires_grad_(False)
        self.state = HoEState()
        self._cache_arg = cache_kwarg(self.model)
        self.experts = nn.ParameterDict({_key(n): nn.Parameter(t, requires_grad=False) for n, t in experts.items()})
        self.routers = nn.ParameterDict({_key(n): nn.Parameter(t, requires_grad=False) for n, t in routers.items()})
        for name in config.target_modules:
            parent_name, _, child = name.rpartition(".")
            parent = self.model.get_submodule(parent_name)
            setattr(parent, child, HoELinear(target_linear(self.model, name), name, self.state))

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Experts and routers under their canonical names."""
        return {_name(k): v for d in (self.experts, self.routers) for k, v in d.items()}

    def forward(self, input_ids, router_mix, attention_mask=None, position_ids=None, cache=None, tensors=None):
        """input_ids: [B,T], router_mix: [B,K], attention_mask: [B,P+T] -> (logits [B,T,V], cache)."""
        if router_mix.dim() != 2 or router_mix.shape[0] != input_ids.shape[0]:
            raise ConfigError(
                f"router_mix must be [B={input_ids.shape[0]}, K], got {tuple(router_mix.shape)}"
            )
        with self.state.bind(self.named_tensors() if tensors is None else tensors, router_mix):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=True, **{self._cache_arg: cache})
        return out.logits, output_cache(out)


def cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of `model.forward`: `cache` in newer transformers 5.x, `past_key_values`
    in older ones (5.17). An unknown keyword would vanish into **kwargs and silently drop the cache."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def output_cache(out):
    """The KV cache of a model output, under either name (`cache` newer, `past_key_values` older)."""
    names = {f for f in getattr(out, "__dataclass_fields__", {})}
    return out.cache if "cache" in names else out.past_key_values


def _key(name: str) -> str:  # ParameterDict keys may not contain "."
    return name.replace(".", "__")


def _name(key: str) -> str:
    return key.replace("__", ".")
