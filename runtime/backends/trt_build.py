"""TensorRT engine from an exported folder (`hoe build-engine`), with TensorRT's name-based Python API.

    model.onnx (+ model.onnx.data) ─► OnnxParser.parse_from_file ─► network (every parser error reported)
        builder config: WORKSPACE pool limit, timing cache (reused when TensorRT accepts it, else
                        started empty; saved back after the build), precision,
                        profile 0 "prefill" and profile 1 "decode" (hoe.contract.engine.profiles)
        ─► build_serialized_network ─► trt/model.engine + trt/engine.json (together or not at all),
                                       trt/timing.cache

Precision. TensorRT 10 builds strongly typed networks when asked (precision comes from the ONNX
types) and weakly typed ones with BuilderFlag.FP16; TensorRT 11 is strongly typed only (the flag is
gone): an fp16 engine comes from an fp16 graph, `hoe export --dtype fp16`. `precision_plan` decides.

Build on the device that will run the engine: an engine is tied to the TensorRT release and the
GPU's compute capability, and `engine.json` records both so the trt backend can refuse a mismatch.
tensorrt is imported only when a build runs.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoe.contract import engine as tp
from hoe.contract.folder import Manifest
from hoe.core.config import JsonConfig
from hoe.core.errors import BackendError, CheckpointError, ConfigError

from .trt import import_tensorrt

log = logging.getLogger(__name__)


@dataclass
class BuildConfig(JsonConfig):
    """How to build one engine (saved in engine.json under `limits` and the fields below)."""

    limits: tp.EngineLimits = field(default_factory=tp.EngineLimits)
    workspace_mb: int = 2048  # builder scratch memory limit (MEMORY pool WORKSPACE)
    fp16: bool = False  # fp16 kernels for an fp32 graph: TensorRT 10 only (weak typing); TensorRT 11 -> error
    optimization_level: int | None = None  # builder_optimization_level 0..5 (None: TensorRT's default, 3)
    engine_dir: str | None = None  # where to write; default: <exported folder>/trt
    verbose: bool = False  # TensorRT's VERBOSE log

    def __post_init__(self) -> None:
        if isinstance(self.limits, dict):
            self.limits = tp.EngineLimits.from_dict(self.limits)
        if self.workspace_mb < 64:
            raise ConfigError(f"workspace_mb must be >= 64, got {self.workspace_mb}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"optimization_level must be in 0..5, got {self.optimization_level}")


@dataclass(frozen=True)
class PrecisionPlan:
    precision: str  # "fp32" or "fp16": what the engine computes in
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    fp16_flag: bool  # BuilderFlag.FP16 (TensorRT 10 weak typing)


def trt_major(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError as e:
        raise BackendError(f"cannot read the TensorRT version {version!r}") from e


def precision_plan(major: int, graph_dtype: str, fp16: bool) -> PrecisionPlan:
    """Which network flags and builder flags give the requested precision on this TensorRT."""
    if major < 10:
        raise BackendError(f"TensorRT {major}.x is too old: the name-based API of TensorRT >= 10 is required "
                           "(JetPack 6.1+ ships 10.3)")
    if graph_dtype == "fp16":
        return PrecisionPlan("fp16", True, False)
    if graph_dtype != "fp32":
        raise ConfigError(f"exported graph dtype must be fp32 or fp16, got {graph_dtype!r}")
    if not fp16:
        return PrecisionPlan("fp32", True, False)
    if major >= 11:
        raise ConfigError("TensorRT 11 builds strongly typed networks only (BuilderFlag.FP16 is gone): export an "
                          "fp16 graph with `hoe export --dtype fp16` and build it without --fp16")
    return PrecisionPlan("fp16", False, True)


def network_flags(trt, plan: PrecisionPlan) -> int:
    """create_network flags: explicit batch is the default since TensorRT 10; STRONGLY_TYPED when planned
    (accepted and ignored by TensorRT 11, where every network is strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if plan.strongly_typed and flag is not None:
        return 1 << int(flag)
    if plan.strongly_typed and trt_major(trt.__version__) == 10:
        raise BackendError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED network flag")
    return 0


def parse_onnx(trt, network, logger, onnx_path: Path):
    """Parse the graph (external data is read from beside it); every parser error goes into the exception.
    Returns the parser, which owns the weights and must live until the build ends."""
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise BackendError(f"TensorRT could not parse {onnx_path} ({len(errors)} errors):\n  " + "\n  ".join(errors))
    return parser


def check_network_io(network, manifest: dict) -> None:
    """The parsed network's inputs/outputs must be those hoe_config.json declares."""
    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    outputs = {network.get_output(i).name for i in range(network.num_outputs)}
    want_in, want_out = set(manifest["inputs"]), set(manifest["outputs"])
    if inputs != want_in or outputs != want_out:
        raise CheckpointError(
            f"model.onnx does not match hoe_config.json: inputs missing {sorted(want_in - inputs)[:5]}, "
            f"extra {sorted(inputs - want_in)[:5]}; outputs missing {sorted(want_out - outputs)[:5]}, "
            f"extra {sorted(outputs - want_out)[:5]}")
    shape = sorted(network.get_input(i).name for i in range(network.num_inputs)
                   if getattr(network.get_input(i), "is_shape_tensor", False))
    if shape:
        raise BackendError(f"TensorRT's parser made the graph inputs {shape[:5]} shape tensors (their values decide "
                           "shapes): the trt backend binds device data tensors only, and their profiles would need "
                           "set_shape_input value ranges; export a graph that uses them only as data")


def add_profiles(builder, config, profs: dict[str, tp.Profile]) -> None:
    """Profile 0 = prefill, 1 = decode (the trt backend selects them by index)."""
    for index, phase in enumerate(tp.PHASES):
        profile = builder.create_optimization_profile()
        for name, shape in profs[phase].items():
            profile.set_shape(name, shape["min"], shape["opt"], shape["max"])
        got = config.add_optimization_profile(profile)
        if got != index:
            raise BackendError(f"TensorRT gave the {phase} profile index {got}, expected {index} "
                               "(an invalid profile is reported as -1; see the log above)")


def configure(trt, builder, cfg: BuildConfig, plan: PrecisionPlan, cache_path: Path):
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if plan.fp16_flag:
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.optimization_level is not None:
        config.builder_optimization_level = cfg.optimization_level
    attach_timing_cache(config, cache_path)
    return config


def attach_timing_cache(config, path: Path) -> bool:
    """Start from the saved timing cache when TensorRT accepts it, else from an empty one. -> True if reused.

    TensorRT refuses a cache whose device properties differ from this GPU's (set_timing_cache returns False:
    IBuilderConfig::setTimingCache in NvInfer.h; we keep ignore_mismatch=False, as a foreign cache "may lead to
    functional/performance bugs") and may return None from create_timing_cache for bytes it cannot read.
    Either way the file is treated as absent (logged) and overwritten after the build: an exported folder
    copied to a Jetson with the development GPU's trt/timing.cache must still build.
    """
    try:
        data = path.read_bytes() if path.is_file() else b""
    except OSError as e:
        log.warning("cannot read the timing cache %s (%s); building without it", path, e)
        data = b""
    if data:
        cache = config.create_timing_cache(data)
        if cache is not None and config.set_timing_cache(cache, False):
            return True
        why = "TensorRT cannot read it" if cache is None else \
            "it was made on a device with other properties (another GPU or TensorRT release)"
        log.warning("ignoring the timing cache %s: %s; building without it, it will be replaced", path, why)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("TensorRT gave no empty timing cache; building without one (none is saved)")
    return False


def save_timing_cache(config, path: Path) -> None:
    """Write the build's timing cache (atomically) when there is one; a missing cache never fails the build."""
    cache = config.get_timing_cache()
    if cache is None:
        log.warning("TensorRT has no timing cache for this build; %s is not written", path)
        return
    try:
        _atomic_write_bytes(path, bytes(cache.serialize()))
    except OSError as e:
        log.warning("could not save the timing cache %s (%s); the engine is complete without it", path, e)


def build_engine(folder: str | Path, cfg: BuildConfig | None = None, gpu: dict | None = None) -> Path:
    """Build `<folder>/trt/model.engine` (+ engine.json, timing.cache) from an exported folder. -> engine dir.

    gpu: {"name", "compute_capability"} of the build device (default: asked from the CUDA binding).
    """
    cfg = cfg or BuildConfig()
    manifest = Manifest.load(folder, verify=True)
    export = manifest.data
    target = export["model"].get("target", "tensorrt")  # exports before targets existed were standard graphs
    if target != "tensorrt":
        raise ConfigError(f"{folder} was exported for target {target!r} (onnxruntime contrib ops); TensorRT needs "
                          f"a graph exported with --target tensorrt")
    profs = tp.profiles(export, cfg.limits)  # ConfigError on bad limits, before TensorRT is touched
    trt = import_tensorrt()
    plan = precision_plan(trt_major(trt.__version__), export["model"].get("dtype", "fp32"), cfg.fp16)
    gpu = gpu or _device_info()
    out = Path(cfg.engine_dir) if cfg.engine_dir else manifest.folder / tp.ENGINE_DIR
    out.mkdir(parents=True, exist_ok=True)
    cache_path = out / tp.TIMING_CACHE
    log.info("building a TensorRT %s %s engine for %s (cc %s): batch <= %d, context <= %d, prefill <= %d",
             trt.__version__, plan.precision, gpu.get("name"), gpu.get("compute_capability"),
             cfg.limits.max_batch, cfg.limits.max_context, cfg.limits.max_prefill)
    logger = trt.Logger(trt.Logger.VERBOSE if cfg.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    parser = parse_onnx(trt, network, logger, manifest.folder / export["model"]["file"])
    check_network_io(network, export)
    config = configure(trt, builder, cfg, plan, cache_path)
    add_profiles(builder, config, profs)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise BackendError("TensorRT could not build the engine (build_serialized_network returned None); "
                           "rerun with --verbose for TensorRT's log")
    del parser  # the weights it owned are in the engine now
    engine_bytes = bytes(serialized)
    data = tp.engine_manifest(export, cfg.limits, profs, trt.__version__, gpu, plan.precision, plan.strongly_typed,
                              cfg.workspace_mb, seconds, time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              hashlib.sha256(engine_bytes).hexdigest())
    publish_engine(out, engine_bytes, data)
    save_timing_cache(config, cache_path)
    log.info("engine %s (%.1f MiB) built in %.0f s", out / tp.ENGINE_FILE, len(engine_bytes) / 2**20, seconds)
    return out


def publish_engine(out: Path, engine_bytes: bytes, data: dict) -> None:
    """model.engine and its engine.json, never one without the other: the old engine.json goes first (so an
    engine.json only ever describes the model.engine beside it; the trt backend refuses a folder without one),
    and if either write fails, model.engine is removed too."""
    engine = out / tp.ENGINE_FILE
    (out / tp.ENGINE_MANIFEST).unlink(missing_ok=True)
    try:
        _atomic_write_bytes(engine, engine_bytes)
        tp.save_engine_manifest(out, data)
    except BaseException:
        engine.unlink(missing_ok=True)
        raise


def _device_info() -> dict:
    from .cuda_memory import select

    return select().device_info()


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    from hoe.core.atomic import atomic_write_bytes

    atomic_write_bytes(path, data)
