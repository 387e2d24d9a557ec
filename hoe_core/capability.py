"""Which base models HoE can adapt and export: decided by what the model *is*, not by a list of names.

    config.json ─► decoder-only CausalLM? known broken? attention kinds (layer_types) we handle?
                ─► build it on the meta device (no weights, no memory) with eager attention
                ─► decoder blocks found; every target module an nn.Linear
                ─► prefill [2,3] + decode [2,1] with a DynamicCache on meta tensors:
                   cache class and its layer classes handled, K/V shaped [B, Hkv, P+T, D] as the export declares

`probe_base` runs all of it in well under a second for any size of model (meta tensors hold no data), so
`hoe assemble`, `hoe export` and `load_hoe` call it before they load weights. A refusal is an
UnsupportedModelError naming the part (module type, attention kind, cache class, failing call).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from pathlib import Path

from .errors import CheckpointError, UnsupportedModelError

log = logging.getLogger(__name__)

# model_type -> why it does not work (found by running it); everything else is judged by the probe.
KNOWN_BROKEN: dict[str, str] = {}
ATTENTION_KINDS = ("full_attention", "sliding_attention")  # config.layer_types values we export
CACHE_LAYERS = ("DynamicLayer", "DynamicSlidingWindowLayer")  # transformers cache layers we handle


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What the probe found (logged; the export records the attention kinds)."""

    model_type: str
    causal_lm: str  # transformers class, e.g. "Gemma3ForCausalLM"
    blocks: str  # name of the decoder-block ModuleList, e.g. "model.layers"
    attention_kinds: list[str] = dataclasses.field(default_factory=list)  # per layer
    cache_layers: list[str] = dataclasses.field(default_factory=list)  # reference cache layer class per layer
    sliding_window: int | None = None  # tokens, when some layer is sliding
    target_modules: list[str] = dataclasses.field(default_factory=list)  # checked targets (default: every block linear)


def probe_base(base_dir: str | Path, target_modules: list[str] | None = None) -> ProbeReport:
    """Probe the base model folder `base_dir` (its config.json only). See the module docstring.

    The meta model and its forward are remembered per process for the same config.json (path, size, mtime):
    export, validation and its references each ask."""
    path = Path(base_dir) / "config.json"
    if not Path(base_dir).is_dir():
        raise CheckpointError(f"base model folder not found: {base_dir}")
    if not path.is_file():
        raise CheckpointError(f"base model folder {base_dir} lacks config.json")
    stat = path.stat()
    report, model = _probe_file((str(path.resolve()), stat.st_size, stat.st_mtime_ns), path.parent)
    return _with_targets(report, model, target_modules)


def probe_config(config, target_modules: list[str] | None = None) -> ProbeReport:
    """Probe a transformers config (see the module docstring); `target_modules`: full module names, or None
    for every nn.Linear of the decoder blocks."""
    return _with_targets(*_probe(config), target_modules)


@functools.lru_cache(maxsize=32)
def _probe_file(key: tuple, base_dir: Path):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(base_dir)
    except (ValueError, KeyError, OSError) as e:
        raise UnsupportedModelError(f"transformers cannot read {base_dir / 'config.json'}: {e}") from e
    return _probe(config)


def _probe(config):
    """Everything but the targets -> (ProbeReport without targets, the model on the meta device)."""
    import torch

    causal_lm = check_config(config)
    config = copy.deepcopy(config)
    config._attn_implementation = "eager"  # what the export traces
    model = _build_on_meta(config)
    blocks = decoder_blocks(model)
    with torch.no_grad():
        cache_layers = _forward_with_cache(model, config)
    from_cache = ["sliding_attention" if c == "DynamicSlidingWindowLayer" else "full_attention" for c in cache_layers]
    kinds = list(getattr(config, "layer_types", None) or from_cache)  # Mistral has none: its cache layers tell
    window = getattr(config, "sliding_window", None) if "sliding_attention" in kinds else None
    return ProbeReport(config.model_type, causal_lm, blocks, kinds, cache_layers, window), model


def _with_targets(report: ProbeReport, model, target_modules: list[str] | None) -> ProbeReport:
    """`report` with the targets checked: each an nn.Linear of `model` (default: every block linear)."""
    from .model import find_target_modules, target_linear

    targets = find_target_modules(model) if target_modules is None else list(target_modules)
    for name in targets:
        target_linear(model, name)
    report = dataclasses.replace(report, target_modules=targets)
    log.debug("probe: %s", report)
    return report


def check_config(config) -> str:
    """The config-only part of the probe (no model built) -> the causal-LM class name."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None)
    if model_type in KNOWN_BROKEN:
        raise UnsupportedModelError(f"model_type {model_type!r} is known not to work: {KNOWN_BROKEN[model_type]}")
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"model_type {model_type!r} is an encoder-decoder; a decoder-only causal LM "
                                    "is expected")
    causal_lm = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if not isinstance(causal_lm, str):
        raise UnsupportedModelError(f"model_type {model_type!r} has no causal-LM class in transformers "
                                    "(AutoModelForCausalLM)")
    kinds = getattr(config, "layer_types", None) or []
    other = sorted(set(kinds) - set(ATTENTION_KINDS))
    if other:
        raise UnsupportedModelError(f"model_type {model_type!r} has layers of attention kind {other}; "
                                    f"supported kinds: {', '.join(ATTENTION_KINDS)}")
    return causal_lm


def decoder_blocks(model) -> str:
    """Name of the ModuleList holding the `num_hidden_layers` decoder blocks."""
    from torch import nn

    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name
    raise UnsupportedModelError(f"{type(model).__name__}: no list of num_hidden_layers={n} decoder blocks found")


def _build_on_meta(config):
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config).eval()
    except (ValueError, TypeError, KeyError, AttributeError, RuntimeError, AssertionError) as e:
        raise UnsupportedModelError(f"transformers cannot build {config.model_type!r} as a causal LM: "
                                    f"{type(e).__name__}: {e}") from e


def _forward_with_cache(model, config) -> list[str]:
    """Prefill 3 tokens then decode 1 (batch 2, left padding) on meta tensors -> cache layer class names."""
    import torch
    from transformers import DynamicCache

    from .model import cache_kwarg, output_cache

    cache = DynamicCache(config=config)
    arg = cache_kwarg(model)
    try:
        for new, total in ((3, 3), (1, 4)):
            ids = torch.zeros(2, new, dtype=torch.long, device="meta")
            mask = torch.ones(2, total, dtype=torch.long, device="meta")
            pos = torch.zeros(2, new, dtype=torch.long, device="meta")
            out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{arg: cache})
            cache = output_cache(out)
    except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError, AttributeError) as e:
        raise UnsupportedModelError(f"{type(model).__name__}: forward with a KV cache fails "
                                    f"({type(e).__name__}: {str(e)[:300]})") from e
    if not isinstance(cache, DynamicCache):
        raise UnsupportedModelError(f"{type(model).__name__} returns a {type(cache).__name__}; a DynamicCache "
                                    "is expected")
    _check_cache_layers(cache, config, type(model).__name__)
    return [type(layer).__name__ for layer in cache.layers]


def _check_cache_layers(cache, config, model_name: str) -> None:
    """Every layer a DynamicLayer (or its sliding variant) with K/V [B, Hkv, P+T, D] as the export declares."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if len(cache.layers) != config.num_hidden_layers:
        raise UnsupportedModelError(f"{model_name}: the cache has {len(cache.layers)} layers, "
                                    f"num_hidden_layers is {config.num_hidden_layers}")
    kinds = [type(layer).__name__ for layer in cache.layers]
    for i, kind in enumerate(kinds):
        if kind not in CACHE_LAYERS:
            raise UnsupportedModelError(f"{model_name}: cache layer {i} is {kind}; supported cache layers: "
                                        f"{', '.join(CACHE_LAYERS)}")
    for i, layer in enumerate(cache.layers):
        want = (2, heads, min(4, getattr(layer, "sliding_window", 5) - 1), head_dim)
        for label in ("keys", "values"):
            shape = tuple(getattr(getattr(layer, label), "shape", ()))
            if shape != want:
                raise UnsupportedModelError(f"{model_name}: cache layer {i} holds {label} {shape or None}; the "
                                            f"export declares [batch, num_kv_heads, length, head_dim] = {want}")
