"""TensorRT engine planning, free of torch and of tensorrt: optimisation profiles computed from the
export manifest, buffer sizes, the engine manifest (`engine.json`) and the checks that refuse an engine
built by another TensorRT, for another GPU, or from another model.

    hoe_config.json ─► dim_ranges(limits) ─► profiles {"prefill", "decode"} ─► builder (runtime/backends/trt_build.py)
                                         └─► buffer_plan (max shape of every input/output) ─► trt backend
    engine.json ─► check_engine_compat(trt version, GPU) / check_tensor_fits(E, r, K) ─► trt backend

Symbolic dimensions are those of docs/FORMAT.md: batch, sequence (T new tokens), past_sequence (P),
total_sequence (P+T), experts (E), rank (r), routers (K), and products ("3*experts*rank"). E, r and K
are dynamic within their maxima, so experts and routers of another size swap in without a rebuild.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hoe.core.atomic import atomic_write_text
from hoe.core.config import JsonConfig
from hoe.core.errors import CheckpointError, ConfigError, InputError, ShapeMismatchError
from hoe.core.packing import dim_symbols, dim_value

from .manifest import packed_sizes as exported_sizes  # E, r, K of the exported experts/routers

ENGINE_DIR = "trt"  # folder inside the exported folder
ENGINE_FILE = "model.engine"
ENGINE_MANIFEST = "engine.json"
TIMING_CACHE = "timing.cache"
ENGINE_FORMAT_VERSION = 1
PHASES = ("prefill", "decode")  # optimisation profile 0 and 1
SYMBOLS = ("batch", "sequence", "past_sequence", "total_sequence", "experts", "rank", "routers")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "bool": 1}

Range = tuple[int, int, int]  # (min, opt, max)
Profile = dict[str, dict[str, list[int]]]  # input name -> {"min": shape, "opt": shape, "max": shape}


@dataclass
class EngineLimits(JsonConfig):
    """What one engine must serve; every dynamic dimension lies within these."""

    max_batch: int = 1  # rows per step
    max_context: int = 2048  # prompt + generated tokens per row (the KV buffers are this long)
    max_prefill: int = 512  # new tokens per prefill step; longer prompts are fed in chunks
    max_experts: int = 0  # E at most; 0 -> the exported E
    max_rank: int = 0  # LoRA rank at most; 0 -> the exported rank
    max_routers: int = 0  # K router experts at most; 0 -> the exported K
    opt_batch: int = 1  # batch the kernels are tuned for

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_context", "max_prefill", "opt_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"EngineLimits.{name} must be an integer >= 1, got {value!r}")
        for name in ("max_experts", "max_rank", "max_routers"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ConfigError(f"EngineLimits.{name} must be an integer >= 0 (0: as exported), got {value!r}")
        if self.max_prefill > self.max_context:
            raise ConfigError(f"EngineLimits.max_prefill ({self.max_prefill}) must be <= max_context "
                              f"({self.max_context})")
        if self.opt_batch > self.max_batch:
            raise ConfigError(f"EngineLimits.opt_batch ({self.opt_batch}) must be <= max_batch ({self.max_batch})")


# ---------------------------------------------------------------------------- profiles


def dim_ranges(manifest: dict, limits: EngineLimits) -> dict[str, dict[str, Range]]:
    """(min, opt, max) of every symbolic dimension, for each phase.

    prefill: T in [1, max_prefill], P in [0, max_context - 1]   (prompt chunks, multi-turn continuation)
    decode:  T = 1,                 P in [0, max_context - 1]   (kernels tuned for half the context)
    """
    ctx = limits.max_context
    max_pos = int((manifest.get("architecture") or {}).get("max_position_embeddings", ctx))
    if ctx > max_pos:
        raise ConfigError(f"max_context {ctx} exceeds the model's max_position_embeddings {max_pos}")
    sizes = exported_sizes(manifest)
    hoe_dims = {}
    for name, limit in (("experts", limits.max_experts), ("rank", limits.max_rank), ("routers", limits.max_routers)):
        current = sizes[name]
        top = limit or current
        if top < current:
            raise ConfigError(f"max {name} {top} is smaller than the exported {name} ({current}); "
                              f"the exported tensors would not fit")
        hoe_dims[name] = (1, current, top)
    batch = (1, limits.opt_batch, limits.max_batch)
    opt_prefill = min(limits.max_prefill, 128)
    half = max(ctx // 2, 1)
    prefill = {"batch": batch, "sequence": (1, opt_prefill, limits.max_prefill), "past_sequence": (0, 0, ctx - 1),
               "total_sequence": (1, opt_prefill, ctx), **hoe_dims}
    decode = {"batch": batch, "sequence": (1, 1, 1), "past_sequence": (0, half - 1, ctx - 1),
              "total_sequence": (1, half, ctx), **hoe_dims}
    return {"prefill": prefill, "decode": decode}


def _check_fixed_dims(manifest: dict, limits: EngineLimits) -> None:
    """A graph exported with a fixed E, r or K cannot take more: say so instead of failing in TensorRT."""
    sizes = exported_sizes(manifest)
    for name in manifest.get("hoe", {}).get("expert_inputs", []) + manifest.get("hoe", {}).get("router_inputs", []):
        spec = manifest["inputs"].get(name)
        if spec is None:
            raise ConfigError(f"hoe_config.json names graph input {name!r} under 'hoe' but not under 'inputs'")
    symbolic = {f for spec in manifest["inputs"].values() for d in spec["shape"] for f in dim_symbols(d)}
    for name, limit in (("experts", limits.max_experts), ("rank", limits.max_rank), ("routers", limits.max_routers)):
        if limit and limit != sizes[name] and name not in symbolic:
            raise ConfigError(f"the exported graph has a fixed {name} dimension ({sizes[name]}), so --max-{name} "
                              f"{limit} cannot be served; re-export with a dynamic {name} dimension")


def profiles(manifest: dict, limits: EngineLimits) -> dict[str, Profile]:
    """Optimisation profiles {"prefill": ..., "decode": ...}: min/opt/max shape of every dynamic graph input.

    Inputs whose shapes are all integers are static and need no profile entry.
    """
    _check_fixed_dims(manifest, limits)
    ranges = dim_ranges(manifest, limits)
    out: dict[str, Profile] = {}
    for phase in PHASES:
        prof = {}
        for name, spec in manifest["inputs"].items():
            shape = spec["shape"]
            if all(isinstance(d, int) for d in shape):
                continue
            prof[name] = {key: [_dim(d, ranges[phase], i, name) for d in shape]
                          for i, key in enumerate(("min", "opt", "max"))}
        out[phase] = prof
    return out


def _dim(d: int | str, ranges: dict[str, Range], which: int, tensor: str) -> int:
    """min/opt/max (which = 0/1/2) of a dimension; a product ("3*experts*rank") takes its factors' values."""
    try:
        return dim_value(d, {name: r[which] for name, r in ranges.items()})
    except KeyError as e:
        raise ConfigError(f"graph input {tensor} has symbolic dimension {e.args[0]!r}; known: {list(SYMBOLS)}") from e


def ort_profile_shapes(profs: dict[str, Profile]) -> dict[str, dict[str, list[int]]]:
    """One min/opt/max for onnxruntime's TensorRT EP (it takes a single profile): the union of the phases,
    tuned (opt) for decode, where generation spends its time."""
    merged: dict[str, dict[str, list[int]]] = {"min": {}, "opt": {}, "max": {}}
    for name in profs["decode"]:
        shapes = [profs[p][name] for p in PHASES]
        merged["min"][name] = [min(s["min"][i] for s in shapes) for i in range(len(shapes[0]["min"]))]
        merged["max"][name] = [max(s["max"][i] for s in shapes) for i in range(len(shapes[0]["max"]))]
        merged["opt"][name] = list(profs["decode"][name]["opt"])
    return merged


def concrete_shape(shape: list, dims: dict[str, int]) -> tuple[int, ...]:
    """A manifest shape with its symbols replaced by this step's sizes."""
    try:
        return tuple(dim_value(d, dims) for d in shape)
    except KeyError as e:
        raise ConfigError(f"no size given for dimension {e.args[0]!r} of shape {shape}") from e


def check_step(profile: Profile, name: str, shape: tuple[int, ...], phase: str) -> None:
    """Refuse a shape outside the engine's profile with the limits in the message (TensorRT's own error
    is an opaque 'setInputShape failed')."""
    if name not in profile:
        return
    lo, hi = profile[name]["min"], profile[name]["max"]
    if len(shape) != len(lo) or any(s < a or s > b for s, a, b in zip(shape, lo, hi)):
        raise InputError(f"{name}: shape {list(shape)} is outside the engine's {phase} profile "
                         f"[{lo} .. {hi}]; rebuild the engine with larger limits (hoe build-engine --help)")


# ---------------------------------------------------------------------------- buffers


def buffer_plan(manifest: dict, limits: EngineLimits) -> dict[str, dict[str, Any]]:
    """Largest shape and byte size of every graph input and output over both phases: what the trt backend
    allocates once (KV buffers at max_context, logits at max_batch x max_prefill)."""
    ranges = dim_ranges(manifest, limits)
    top = {s: max(ranges[p][s][2] for p in PHASES) for s in ranges["prefill"]}
    plan = {}
    for mode in ("inputs", "outputs"):
        for name, spec in manifest[mode].items():
            shape = concrete_shape(spec["shape"], top)
            plan[name] = {"mode": mode[:-1], "dtype": spec["dtype"], "shape": list(shape),
                          "bytes": math.prod(shape) * _dtype_bytes(spec["dtype"], name)}
    return plan


def _dtype_bytes(dtype: str, name: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"{name}: dtype {dtype!r} is not one the trt backend handles ({sorted(DTYPE_BYTES)})")
    return DTYPE_BYTES[dtype]


def memory_estimate_mb(manifest: dict, limits: EngineLimits) -> dict[str, float]:
    """I/O buffer memory in MiB: KV (twice: ping-pong past/present), logits, experts/routers, rest."""
    plan = buffer_plan(manifest, limits)
    kv = manifest["kv_cache"]
    past = {kv["past_key"] % i for i in range(_num_layers(manifest))} | {
        kv["past_value"] % i for i in range(_num_layers(manifest))}
    hoe = set(manifest["hoe"].get("expert_inputs", [])) | set(manifest["hoe"].get("router_inputs", []))
    mib = 1 / 2**20
    kv_bytes = sum(v["bytes"] for n, v in plan.items() if n in past) * 2
    logits = plan.get("logits", {"bytes": 0})["bytes"]
    tensors = sum(v["bytes"] for n, v in plan.items() if n in hoe)
    return {"kv_cache": round(kv_bytes * mib, 1), "logits": round(logits * mib, 1),
            "experts_routers": round(tensors * mib, 1)}


def _num_layers(manifest: dict) -> int:
    return int(manifest["architecture"]["num_layers"])


# ---------------------------------------------------------------------------- engine manifest


def engine_manifest(export: dict, limits: EngineLimits, profs: dict[str, Profile], trt_version: str,
                    gpu: dict[str, str], precision: str, strongly_typed: bool, workspace_mb: int,
                    build_seconds: float, built: str, engine_sha256: str) -> dict[str, Any]:
    """The `engine.json` written next to the engine."""
    sources = {k: v for k, v in (export.get("sha256") or {}).items()
               if k in (export["model"]["file"], export["model"].get("external_data"))}
    return {"format_version": ENGINE_FORMAT_VERSION, "engine": ENGINE_FILE, "timing_cache": TIMING_CACHE,
            "tensorrt": trt_version, "gpu": dict(gpu), "built": built, "build_seconds": round(build_seconds, 1),
            "precision": precision, "strongly_typed": strongly_typed, "workspace_mb": workspace_mb,
            "limits": limits.to_dict(), "profiles": {p: {"index": i, "shapes": profs[p]} for i, p in enumerate(PHASES)},
            "exported_sizes": exported_sizes(export), "source_sha256": sources, "sha256": {ENGINE_FILE: engine_sha256}}


def save_engine_manifest(folder: Path, data: dict) -> Path:
    path = Path(folder) / ENGINE_MANIFEST
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def load_engine_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / ENGINE_MANIFEST
    if not path.is_file():
        raise CheckpointError(f"no TensorRT engine in {folder}: {ENGINE_MANIFEST} not found; "
                              "build one on this device with `hoe build-engine`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from e
    if data.get("format_version") != ENGINE_FORMAT_VERSION:
        raise ConfigError(f"{path}: format_version {data.get('format_version')!r}, expected {ENGINE_FORMAT_VERSION}")
    missing = [k for k in ("tensorrt", "gpu", "limits", "profiles", "engine") if k not in data]
    if missing:
        raise ConfigError(f"{path} lacks {missing}")
    return data


def _release(version: str) -> tuple[int, ...]:
    """major.minor.patch of a TensorRT version string ("10.3.0.30" -> (10, 3, 0))."""
    try:
        return tuple(int(p) for p in str(version).split(".")[:3])
    except ValueError as e:
        raise ConfigError(f"cannot read TensorRT version {version!r}") from e


def check_engine_compat(engine: dict, trt_version: str, gpu: dict[str, str]) -> list[str]:
    """Refuse an engine this TensorRT and this GPU cannot run; return warnings for what merely may be slow.

    TensorRT engines are tied to the TensorRT release that built them and to the GPU's compute capability.
    """
    built, here = engine["tensorrt"], trt_version
    if _release(built) != _release(here):
        raise CheckpointError(f"this engine was built by TensorRT {built}, but TensorRT {here} is installed; "
                              "engines do not move between TensorRT releases: rebuild it with `hoe build-engine`")
    cc_built, cc_here = str(engine["gpu"].get("compute_capability")), str(gpu.get("compute_capability"))
    if cc_built != cc_here:
        raise CheckpointError(f"this engine was built for {engine['gpu'].get('name')} (compute capability {cc_built}), "
                              f"but this GPU is {gpu.get('name')} (compute capability {cc_here}); "
                              "rebuild it on this device with `hoe build-engine`")
    warnings = []
    if engine["gpu"].get("name") != gpu.get("name"):
        warnings.append(f"engine built on {engine['gpu'].get('name')}, running on {gpu.get('name')} "
                        "(same compute capability: it runs, but its kernels were tuned for the other GPU)")
    return warnings


def check_source(engine: dict, export: dict) -> None:
    """The engine must come from the graph the exported folder holds now (sha256 of model.onnx[.data])."""
    now = export.get("sha256") or {}
    for name, digest in (engine.get("source_sha256") or {}).items():
        if name in now and now[name] != digest:
            raise CheckpointError(f"the engine was built from another {name} (sha256 {digest[:12]}…, the folder "
                                  f"now has {now[name][:12]}…); rebuild it with `hoe build-engine`")


def check_tensor_fits(engine: dict, sizes: dict[str, int]) -> None:
    """Experts/routers being loaded (E, r, K) must lie within the engine's profile maxima."""
    limits, exported = engine["limits"], engine.get("exported_sizes") or {}
    for name, key in (("experts", "max_experts"), ("rank", "max_rank"), ("routers", "max_routers")):
        top = limits.get(key) or exported.get(name)
        if top is None:
            raise ConfigError(f"engine.json gives no maximum for {name} (limits.{key} or exported_sizes.{name})")
        if sizes[name] > top:
            raise ShapeMismatchError(f"{name} = {sizes[name]} exceeds the engine's maximum {top}; rebuild with "
                                     f"`hoe build-engine --{key.replace('_', '-')} {sizes[name]}`")
