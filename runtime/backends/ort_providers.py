"""onnxruntime execution providers: CUDA / TensorRT options, engine cache, and which provider really ran.

onnxruntime drops a requested provider it cannot load (a CPU-only wheel, a missing libcudnn or
libnvinfer) with no more than a printed warning and then runs everything on the CPU. This module
makes that visible:

    provider_options(["tensorrt"], cache_dir) ──► (providers, options) for InferenceSession(...)
    resolve(BackendConfig.providers)          ──► the same, from names or (name, options) pairs
    active_providers(session)                 ──► what the session actually registered
    check_fallback(requested, session)        ──► BackendError (strict) or a logged warning
    check_used(requested, used)               ──► the fallback as a message (None when all ran)
    device_of(used)                           ──► "cuda" or "cpu", where OrtValues should live
    node_placement(profile_file)              ──► nodes executed per provider, from an ORT profile

Torch-free; imports onnxruntime only inside the functions that need it.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hoe.core.errors import BackendError

log = logging.getLogger(__name__)

CPU, CUDA, TENSORRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT, "trt": TENSORRT}
KNOWN = (TENSORRT, CUDA, CPU)


@dataclass
class ProviderSettings:
    """Knobs of the GPU providers (the defaults suit one model on one GPU)."""

    device_id: int = 0  # CUDA device index
    fp16: bool = False  # TensorRT EP: allow fp16 kernels for an fp32 graph (TensorRT 10 only; 11 is strongly typed)
    workspace_mb: int = 2048  # TensorRT EP: builder workspace limit
    cuda_graph: bool = False  # CUDA EP: capture a CUDA graph (needs fixed shapes and fixed input addresses)
    gpu_mem_limit_mb: int = 0  # CUDA EP: arena limit; 0 -> no limit


def normalize(providers: list[str]) -> list[str]:
    """Full provider names in priority order: aliases resolved, CUDA added behind TensorRT (for the nodes
    TensorRT rejects), CPU always last (onnxruntime needs it for shape ops)."""
    names = []
    for p in providers:
        name = ALIASES.get(p.lower(), p) if isinstance(p, str) else p
        if name not in KNOWN:
            raise BackendError(f"unknown execution provider {p!r}; expected one of "
                               f"{sorted(ALIASES)} or {list(KNOWN)}")
        if name not in names:
            names.append(name)
    if TENSORRT in names and CUDA not in names:
        names.insert(names.index(TENSORRT) + 1, CUDA)
    if CPU in names:
        names.remove(CPU)
    return names + [CPU]


def format_shapes(shapes: dict[str, list[int] | tuple[int, ...]]) -> str:
    """onnxruntime's TensorRT profile format: "name:1x2x3,other:4x5"."""
    return ",".join(f"{name}:{'x'.join(str(int(d)) for d in shape)}" for name, shape in shapes.items())


def provider_options(providers: list[str], cache_dir: str | Path, settings: ProviderSettings | None = None,
                     profile: dict[str, dict[str, list[int]]] | None = None) -> tuple[list[str], list[dict]]:
    """(providers, provider_options) for `onnxruntime.InferenceSession(path, providers=..., provider_options=...)`.

    cache_dir: where the TensorRT EP keeps its engines and timing cache (created if missing).
    profile: {"min": {input: shape}, "opt": {...}, "max": {...}} for the TensorRT EP's dynamic shapes
    (see `hoe.contract.engine.ort_profile_shapes`); without it the EP rebuilds its
    engine whenever an input shape leaves the range it has seen.
    """
    settings = settings or ProviderSettings()
    names = normalize(providers)
    options = []
    for name in names:
        if name == CUDA:
            options.append(_cuda_options(settings))
        elif name == TENSORRT:
            options.append(_tensorrt_options(settings, Path(cache_dir), profile))
        else:
            options.append({})
    return names, options


def _cuda_options(s: ProviderSettings) -> dict[str, str]:
    opts = {"device_id": str(s.device_id), "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC", "do_copy_in_default_stream": flag(True)}
    if s.cuda_graph:
        opts["enable_cuda_graph"] = flag(True)
    if s.gpu_mem_limit_mb > 0:
        opts["gpu_mem_limit"] = str(s.gpu_mem_limit_mb << 20)
    return opts


# Boolean options of the TensorRT EP. onnxruntime's Python binding parses them itself and takes only
# "True"/"true"/"False"/"false" (anything else throws "The value for the key '...' should be 'True' or 'False'",
# which InferenceSession answers by silently retrying on CUDA/CPU without any options):
# onnxruntime/python/onnxruntime_pybind_state.cc, CreateExecutionProviderFactoryInstance, TensorRT branch.
TENSORRT_BOOL_OPTIONS = frozenset("""
trt_bf16_enable trt_build_heuristics_enable trt_context_memory_sharing_enable trt_cuda_graph_enable
trt_detailed_build_log trt_dla_enable trt_dump_ep_context_model trt_dump_subgraphs trt_engine_cache_enable
trt_engine_decryption_enable trt_engine_hw_compatible trt_force_sequential_engine_build trt_force_timing_cache
trt_fp16_enable trt_int8_enable trt_int8_use_native_calibration_table trt_layer_norm_fp32_fallback
trt_sparsity_enable trt_timing_cache_enable trt_weight_stripped_engine_enable
""".split())
_TRUE, _FALSE = ("True", "true"), ("False", "false")


def flag(on: bool) -> str:
    """A boolean provider option as both GPU providers take it ("True"/"False"; the CUDA EP also takes "1"/"0",
    the TensorRT EP does not)."""
    return "True" if on else "False"


def option_value(value) -> str:
    """A caller's option value as the string onnxruntime wants (Python bools become "True"/"False")."""
    return flag(value) if isinstance(value, bool) else str(value)


def check_tensorrt_options(options: dict[str, str]) -> None:
    """Refuse boolean TensorRT EP options the binding would reject (it would drop the provider silently)."""
    bad = {k: v for k, v in options.items() if k in TENSORRT_BOOL_OPTIONS and v not in _TRUE + _FALSE}
    if bad:
        raise BackendError(f"TensorRT provider options {bad}: onnxruntime takes only 'True' or 'False' for these "
                           "(not '1'/'0'); with any other value it drops the provider and runs on CUDA/CPU")


def _tensorrt_options(s: ProviderSettings, cache_dir: Path, profile: dict | None) -> dict[str, str]:
    engines = cache_dir / "ort_trt_engines"
    engines.mkdir(parents=True, exist_ok=True)
    opts = {"device_id": str(s.device_id), "trt_max_workspace_size": str(s.workspace_mb << 20),
            "trt_fp16_enable": flag(s.fp16),
            "trt_engine_cache_enable": flag(True), "trt_engine_cache_path": str(engines),
            "trt_timing_cache_enable": flag(True), "trt_timing_cache_path": str(engines)}
    if profile:
        missing = [k for k in ("min", "opt", "max") if k not in profile]
        if missing:
            raise BackendError(f"TensorRT EP profile needs min/opt/max shapes, missing {missing}")
        for key in ("min", "opt", "max"):
            opts[f"trt_profile_{key}_shapes"] = format_shapes(profile[key])
    return opts


def default_cache_dir() -> Path:
    """Where the TensorRT EP caches engines when the caller names no folder: `$HOE_CACHE/ort_trt`."""
    return Path(os.environ.get("HOE_CACHE", Path.home() / ".cache" / "hoe")) / "ort_trt"


def resolve(providers: list | None, ort=None, cache_dir: str | Path | None = None,
            settings: ProviderSettings | None = None, profile: dict | None = None) -> tuple[list[str], list[dict]]:
    """`BackendConfig.providers` -> (names, options): names or (name, options) pairs; None -> CPU only
    (a GPU is used when asked for, never guessed). Options given by the caller override ours.
    `ort` (the onnxruntime module) is accepted for the caller's convenience and not needed."""
    entries = providers or [CPU]
    user: dict[str, dict] = {}
    names = []
    for entry in entries:
        if isinstance(entry, (tuple, list)):
            if len(entry) != 2 or not isinstance(entry[1], dict):
                raise BackendError(f"a provider entry is a name or (name, options dict), got {entry!r}")
            name = normalize([entry[0]])[0]
            user[name] = {k: option_value(v) for k, v in entry[1].items()}
        else:
            name = entry
        names.append(name)
    names, options = provider_options(names, cache_dir or default_cache_dir(), settings, profile)
    merged = [{**opts, **user.get(name, {})} for name, opts in zip(names, options)]
    for name, opts in zip(names, merged):
        if name == TENSORRT:
            check_tensorrt_options(opts)
    return names, merged


def check_used(requested: list[str], used: list[str]) -> str | None:
    """A message naming the requested GPU providers that are not in use, or None when all are."""
    missing = [p for p in normalize(list(requested)) if p != CPU and p not in used]
    if not missing:
        return None
    return (f"onnxruntime did not enable {missing}: the session runs on {list(used)} "
            f"(this onnxruntime build offers {available_providers()})")


def device_of(used: list[str]) -> str:
    """"cuda" when a GPU provider runs the session (inputs/outputs may stay on the GPU), else "cpu"."""
    return "cuda" if any(p in (CUDA, TENSORRT) for p in used) else "cpu"


def active_providers(session) -> list[str]:
    """Providers the session actually registered (a provider that failed to load is absent)."""
    return list(session.get_providers())


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def check_fallback(requested: list[str], session, strict: bool = True) -> list[str]:
    """Compare what was asked for with what runs; return the GPU providers that were dropped.

    strict: raise BackendError when a requested GPU provider is missing (the default: a silent CPU
    run of a model meant for a GPU is a bug); otherwise log a warning and go on.
    """
    active = active_providers(session)
    missing = [p for p in normalize(requested) if p != CPU and p not in active]
    if missing:
        msg = (f"onnxruntime did not enable {missing}: the session runs on {active}. "
               f"This onnxruntime build offers {available_providers()}; install onnxruntime-gpu "
               "(not together with onnxruntime) and the CUDA/cuDNN/TensorRT libraries it was built for. "
               "If onnxruntime printed 'EP Error' above, it rejected a provider option instead and retried "
               "without any options")
        if strict:
            raise BackendError(msg)
        log.warning(msg)
    return missing


def node_placement(profile_file: str | Path) -> dict[str, int]:
    """Nodes executed per provider, read from an onnxruntime profile (SessionOptions.enable_profiling,
    then `session.end_profiling()` gives the file). A TensorRT-fused subgraph counts as one node."""
    try:
        events = json.loads(Path(profile_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BackendError(f"cannot read onnxruntime profile {profile_file}: {e}") from e
    counts: Counter[str] = Counter()
    seen = set()
    for ev in events if isinstance(events, list) else []:
        args = ev.get("args") or {}
        provider, name = args.get("provider"), ev.get("name", "")
        if ev.get("cat") != "Node" or not provider or not name.endswith("_kernel_time"):
            continue
        if name not in seen:
            seen.add(name)
            counts[provider] += 1
    return dict(counts)
