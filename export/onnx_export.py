"""`hoe export`: base model + HoE checkpoint -> exported folder (docs/FORMAT.md), validated against PyTorch.

    check inputs ─► load ─► trace base with HoE markers ─► splice expert mixtures ─► optimise
      ─► save graph + packed experts/routers + tokenizer + manifest (temporary folder)
      ─► TensorRT readiness ─► validate (ORT CPU vs PyTorch) ─► rename to OUT_DIR

Everything that can be refused (existing OUT_DIR, unsupported architecture, experts that do not fit
the base) is refused before the slow work starts. `export_base` writes the same graph without
experts (no `router_mix`, no expert inputs): the baseline the benchmarks compare HoE against.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoe.contract import kv_int8
from hoe.contract import manifest as mf
from hoe.contract.io_spec import (
    KV_CACHE,
    ROUTER_MIX,
    ModelDims,
    TensorSpec,
    expert_tensor_specs,
    graph_inputs,
    graph_outputs,
)
from hoe.core.config import HoEConfig, JsonConfig
from hoe.core.errors import ConfigError
from hoe.runtime.kernels import ATTENTION_KERNEL, GATHER_KERNEL, LINEAR_KERNEL

from .quantize import QuantConfig

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16"}
KV_CACHES = ("auto", kv_int8.DTYPE)  # the cache's precision: the graph's dtype, or int8 rows (contract/kv_int8.py)
# What the graph is built for (docs/GRAPH.md): the onnxruntime targets get fused attention (GroupQueryAttention,
# KV buffer shared by past and present) and fused RMSNorm (com.microsoft ops); tensorrt keeps standard ONNX ops.
TARGETS = ("ort-cpu", "ort-cuda", "tensorrt")
FUSED_TARGETS = ("ort-cpu", "ort-cuda")
MIN_OPSET = 18  # torch.onnx dynamo export of the KV-cache graph fails at 17
MAX_OPSET = 23  # newest opset seen converted (torch traces at 18, onnxscript converts; an unknown one stays 18)
TOKENIZER_FILES = {"tokenizer": "tokenizer.json", "tokenizer_config": "tokenizer_config.json",
                   "special_tokens_map": "special_tokens_map.json", "chat_template": "chat_template.jinja",
                   "generation_config": "generation_config.json"}
STAGES = ("check", "load", "trace", "experts", "optimise", "quantize", "save", "tensorrt", "validate", "publish")


@dataclass
class ExportConfig(JsonConfig):
    """How to export."""

    opset: int = 20  # ONNX default-domain opset (TensorRT 10.3 reads up to 20)
    dtype: str = "fp32"  # fp32 | fp16 (weights/activations; softmax, norms, router softmax stay fp32)
    experts: bool = True  # False: plain base graph (same I/O minus router_mix and expert/router inputs)
    validate: bool = True  # ORT CPU vs PyTorch parity check at the end (validation.json)
    force: bool = False  # replace an existing output folder
    threads: int = 2  # torch / onnxruntime threads during validation
    target: str = "ort-cpu"  # ort-cpu | ort-cuda (fused graph, onnxruntime contrib ops) | tensorrt (standard ops)
    weights: str = "fp32"  # base weight precision: fp32 | fp16 | int8 | int4 (quantize.py)
    block_size: int = 32  # int8/int4: inputs per quantization block
    symmetric: bool = True  # int8/int4: False adds a zero point per block
    accuracy_level: int = 4  # MatMulNBits activations: 0 exact fp32, 4 int8 (fastest on CPU)
    table: str = ""  # embedding table / tied lm_head precision: "" = as `weights`, else fp32|fp16|int8|int4
    bake_experts: bool = False  # onnxruntime targets: experts and routers as initializers (baked.py)
    offsets: bool = False  # int8/int4 on onnxruntime: min-max grid with a float offset per block (quantize.py)
    mixture_kernel: bool = False  # baked: gating + lora_B per group as hoe's Mixture op (runtime/kernels.py)
    attention_kernel: bool = False  # ort-cpu, fp32: hoe's Attention op in place of GroupQueryAttention
    kv_cache: str = "auto"  # auto: the graph's dtype | int8: rows of D int8 + fp32 scale (needs attention_kernel)
    linear_kernel: bool = False  # ort-cpu, fp32, symmetric int4: hoe's MatMulInt4 in place of MatMulNBits

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"target must be one of {list(TARGETS)}, got {self.target!r}")
        self.quant_config()  # refuses bad weights/target/block-size combinations before any work
        if self.bake_experts:
            from .baked import check_bakeable

            check_bakeable(self.quant_config(), self.experts)
            if self.weights == "fp32" and self.dtype != "fp32":
                raise ConfigError(f"--bake-experts with fp32 weights needs an fp32 graph, got dtype {self.dtype!r}")
        if self.mixture_kernel:
            _check_mixture_kernel(self)
        if self.attention_kernel:
            _check_attention_kernel(self)
        if self.linear_kernel:
            _check_linear_kernel(self)
        if self.kv_cache not in KV_CACHES:
            raise ConfigError(f"kv_cache must be one of {list(KV_CACHES)}, got {self.kv_cache!r}")
        if self.kv_cache == kv_int8.DTYPE and not self.attention_kernel:
            raise ConfigError("--kv-cache int8 needs --attention-kernel (hoe's AttentionInt8 op reads and writes the "
                              "int8 rows)")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not isinstance(self.opset, int) or not MIN_OPSET <= self.opset <= MAX_OPSET:
            raise ConfigError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}] (KV-cache export fails "
                              f"below {MIN_OPSET}; newer ones are not converted), got {self.opset!r}")
        if not isinstance(self.threads, int) or self.threads < 1:
            raise ConfigError(f"threads must be an integer >= 1, got {self.threads!r}")

    def quant_config(self) -> QuantConfig:
        return QuantConfig(weights=self.weights, block_size=self.block_size, symmetric=self.symmetric,
                           accuracy_level=self.accuracy_level, target=self.target, table=self.table,
                           offsets=self.offsets)


def _check_mixture_kernel(config: ExportConfig) -> None:
    if not config.bake_experts or config.dtype != "fp32" or config.target != "ort-cpu":
        raise ConfigError(f"--mixture-kernel needs --bake-experts, an fp32 graph and target ort-cpu (a CPU kernel), "
                          f"got bake_experts {config.bake_experts}, dtype {config.dtype!r}, target {config.target!r}")
    _check_library("--mixture-kernel")


def _check_attention_kernel(config: ExportConfig) -> None:
    if config.dtype != "fp32" or config.target != "ort-cpu":
        raise ConfigError(f"--attention-kernel needs an fp32 graph and target ort-cpu (a CPU kernel), got dtype "
                          f"{config.dtype!r}, target {config.target!r}")
    _check_library("--attention-kernel")


def _check_linear_kernel(config: ExportConfig) -> None:
    from .linear_kernel import INPUTS

    if (config.weights != "int4" or not config.symmetric or config.block_size % INPUTS or config.dtype != "fp32"
            or config.target != "ort-cpu"):
        raise ConfigError(f"--linear-kernel needs --weights int4, symmetric, a block size that is a multiple of "
                          f"{INPUTS}, an fp32 graph and target ort-cpu (a CPU kernel), got weights {config.weights!r}, "
                          f"symmetric {config.symmetric}, block size {config.block_size}, dtype {config.dtype!r}, "
                          f"target {config.target!r}")
    _check_library("--linear-kernel")


def _check_library(flag: str) -> None:
    from hoe.runtime import kernels

    if kernels.library() is None:
        raise ConfigError(f"{flag}: this install of hoe has no kernels library ({kernels.LIBRARY_MODULE}); "
                          "reinstall where a C++17 compiler is available")


@dataclass
class ExportResult:
    out_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    file_sizes: dict[str, int] = field(default_factory=dict)
    trt: dict = field(default_factory=dict)  # trt_ops.TrtReport.to_dict()
    validation: dict | None = None  # validation.json content


# ---------------------------------------------------------------------------- checks before work


def check_base_dir(base_dir: Path, target_modules: list[str] | None = None) -> dict:
    """config.json of a base the capability probe accepts (hoe.core.capability, no weights loaded)."""
    from hoe.core.capability import probe_base

    probe_base(base_dir, target_modules)
    return json.loads((base_dir / "config.json").read_text())


def check_base_weights(base_dir: Path) -> None:
    """Refuse a base folder whose weights are not safetensors (pickle is never loaded)."""
    from hoe.core.loading import check_safetensors_folder

    check_safetensors_folder(base_dir)


def check_out_dir(out_dir: Path, force: bool, inputs=()) -> Path:
    """The resolved output folder, refused when it exists (without `force`) or overlaps an input."""
    from hoe.core.atomic import check_output

    return check_output(out_dir, inputs, force)


# ---------------------------------------------------------------------------- the export


def export(base_dir, ckpt_dir, out_dir, config: ExportConfig | None = None) -> ExportResult:
    """Export base + HoE checkpoint to `out_dir` (see the module docstring). Returns timings, sizes, results.

    Raises CheckpointError / UnsupportedModelError / ShapeMismatchError / ConfigError before any work
    when the request cannot be served, and validate.ParityError when validation fails (the folder is
    then left at `OUT_DIR.failed` for inspection, OUT_DIR is untouched).
    """
    from hoe.core.gguf import resolve_base

    config = config or ExportConfig()
    inputs = [Path(base_dir)] + ([Path(ckpt_dir)] if ckpt_dir else [])
    check_out_dir(Path(out_dir), config.force, inputs)  # before a .gguf base is converted
    return _Export(resolve_base(base_dir), Path(ckpt_dir) if ckpt_dir else None, Path(out_dir), config).run()


def export_base(base_dir, out_dir, config: ExportConfig | None = None, ckpt_dir=None) -> ExportResult:
    """The plain base graph (no experts). With `ckpt_dir`, its objectives/anchors are recorded in the manifest."""
    config = ExportConfig(**{**(config or ExportConfig()).to_dict(), "experts": False})
    return export(base_dir, ckpt_dir, out_dir, config)


class _Export:
    """One export run; each stage is a method, timed and shown on a progress bar."""

    def __init__(self, base_dir: Path, ckpt_dir: Path | None, out_dir: Path, config: ExportConfig) -> None:
        self.base_dir, self.ckpt_dir, self.out_dir, self.config = base_dir, ckpt_dir, out_dir, config
        self.dtype = DTYPES[config.dtype]
        self.result = ExportResult(out_dir)
        self.tmp: Path | None = None
        self.packed: dict | None = None  # _packed()
        self.fused = config.target in FUSED_TARGETS

    def run(self) -> ExportResult:
        from tqdm import tqdm

        stages = [s for s in STAGES if s != "validate" or self.config.validate]
        with tqdm(total=len(stages), desc="hoe export", unit="stage") as bar:
            try:
                for stage in stages:
                    bar.set_postfix_str(stage)
                    start = time.perf_counter()
                    getattr(self, f"_{stage}")()
                    self.result.seconds[stage] = round(time.perf_counter() - start, 2)
                    bar.update()
            except BaseException:
                if self.tmp is not None and self.tmp.exists():
                    shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        return self.result

    # -- stages ------------------------------------------------------------------------------------
    def _check(self) -> None:
        inputs = [self.base_dir] + ([self.ckpt_dir] if self.ckpt_dir else [])
        self.out_dir = self.result.out_dir = check_out_dir(self.out_dir, self.config.force, inputs)
        if self.config.experts and self.ckpt_dir is None:
            raise ConfigError("a HoE checkpoint folder is required unless experts=False (--no-experts)")
        self.hoe_config = HoEConfig.load(self.ckpt_dir / mf.HOE_FILE) if self.ckpt_dir else None
        targets = list(self.hoe_config.target_modules) if self.config.experts else None
        self.hf_config = check_base_dir(self.base_dir, targets)
        check_base_weights(self.base_dir)

    def _load(self) -> None:
        from hoe.core.checkpoint import HoECheckpoint
        from hoe.core.loading import load_base

        self.model = load_base(self.base_dir, self.config.dtype)
        _use_eager_attention(self.model)
        self.ckpt = HoECheckpoint.load(self.ckpt_dir) if self.ckpt_dir else None
        if self.ckpt is not None:
            self.ckpt.validate(self.model)  # module names, shapes and base identity, before any tracing
        cfg = self.model.config
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads  # None: no GQA
        self.dims = ModelDims(num_layers=cfg.num_hidden_layers, num_kv_heads=kv_heads,
                              head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                              vocab_size=cfg.vocab_size, dtype=self.dtype,
                              kv_cache=self.config.kv_cache if self.config.kv_cache != "auto" else "")
        self.modules = list(self.hoe_config.target_modules) if self.config.experts else []
        self.features = {m: (self.model.get_submodule(m).in_features, self.model.get_submodule(m).out_features)
                         for m in self.modules}

    def _trace(self) -> None:
        from .fused_attention import supported
        from .graph import mark_modules, trace
        from .projections import pack_projections
        from .static_split import split_sequences_to_split

        if self.fused and not supported(self.model):
            if self.config.attention_kernel:
                raise ConfigError(f"--attention-kernel replaces the fused attention, which model_type "
                                  f"{self.model.config.model_type!r} does not get (export/fused_attention.py)")
            log.info("%s: no fused attention for model_type %r; the %s graph keeps the standard attention",
                     self.base_dir, self.model.config.model_type, self.config.target)
            self.fused = False
        mark_modules(self.model, self.modules)
        self.base_inputs = graph_inputs(self.dims, None)
        self.outputs = graph_outputs(self.dims)
        self.graph = trace(self.model, self.base_inputs, self.outputs, self.dims.num_layers,
                           self.dims.vocab_size, self.config.opset, fused_attention=self.fused,
                           attention_kernel=self.config.attention_kernel,
                           int8_cache=self.dims.kv_cache == kv_int8.DTYPE)
        got = self.graph.opset_imports.get("")
        if got != self.config.opset:
            raise ConfigError(f"the traced graph has opset {got}, expected the requested {self.config.opset} "
                              "(the converter could not reach it)")
        split_sequences_to_split(self.graph)  # fused projections' chunk: static Split for TensorRT
        pack_projections(self.graph)  # q/k/v, gate/up: one product each
        del self.model

    def _experts(self) -> None:
        from .hoe_graph import insert_experts, remove_sites, site_groups

        if not self.config.experts:
            remove_sites(self.graph)
            self.hoe_specs = None
        else:
            self.groups = site_groups(self.graph.graph, self.modules, self.features)
            self.hoe_specs = expert_tensor_specs(self.groups, self.dtype)
            router_mix = next(s for s in graph_inputs(self.dims, []) if s.name == ROUTER_MIX)
            insert_experts(self.graph, self.groups, self.hoe_specs, router_mix, self.dtype)
        self.inputs = graph_inputs(self.dims, self.hoe_specs)
        _set_io_shapes(self.graph, self.inputs, self.outputs)

    def _optimise(self) -> None:
        from .optimize import optimize

        optimize(self.graph, fused=self.fused)
        _set_io_shapes(self.graph, self.inputs, self.outputs)

    def _quantize(self) -> None:
        from .quantize import quantize_model

        self.quantization = quantize_model(self.graph, self.config.quant_config())
        if self.config.bake_experts:
            from .baked import bake_experts

            self.quantization["experts"] = bake_experts(self.graph, self.groups, self._packed(),
                                                        self.config.quant_config(), self.config.mixture_kernel)
        if self.config.linear_kernel:
            from .linear_kernel import use_kernel

            section = self.quantization["linear_kernel"] = use_kernel(self.graph)
            if section["lm_head"] and self.quantization.get("lm_head"):
                self.quantization["lm_head"]["op"] = LINEAR_KERNEL
            if section["embedding"] and self.quantization.get("embedding"):
                self.quantization["embedding"]["op"] = GATHER_KERNEL
        self.opset = self.graph.opset_imports.get("", self.config.opset)

    def _save(self) -> None:
        import onnx_ir as ir
        from hoe.core.atomic import clean_stale, sibling

        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(self.out_dir.parent)  # what a killed earlier run left (our naming, its process gone)
        self.tmp = sibling(self.out_dir)
        self.tmp.mkdir()
        ir.save(self.graph, self.tmp / mf.MODEL_FILE, external_data=mf.DATA_FILE)
        del self.graph
        files = {}
        if self.ckpt is not None and self.config.experts:
            files.update(mf.save_packed(self.tmp, self._packed()))
        if self.ckpt_dir is not None:
            shutil.copyfile(self.ckpt_dir / mf.HOE_FILE, self.tmp / mf.HOE_FILE)
            files["hoe"] = mf.HOE_FILE
        files.update(_copy_tokenizer(self.base_dir, self.tmp))
        self.manifest = mf.write_manifest(self.tmp, self._manifest(files))
        self.result.file_sizes = {p.name: p.stat().st_size for p in sorted(self.tmp.iterdir())}

    def _tensorrt(self) -> None:
        from .trt_ops import check_model

        if self.fused:  # com.microsoft ops by design: TensorRT is the `tensorrt` target's business
            self.result.trt = {"skipped": f"target {self.config.target}: onnxruntime graph (contrib ops)",
                               "ready": None, "op_counts": _op_counts(self.tmp / mf.MODEL_FILE), "problems": []}
            return
        report = check_model(self.tmp / mf.MODEL_FILE)
        self.result.trt = report.to_dict()
        log.info("%s", report.summary())

    def _validate(self) -> None:
        from .validate import ValidationConfig, validate_export

        report = validate_export(self.tmp, self.base_dir, self.ckpt_dir if self.config.experts else None,
                                 ValidationConfig(threads=self.config.threads))
        self.result.validation = report
        if not report["passed"]:
            failed = self.out_dir.with_name(self.out_dir.name + ".failed")
            shutil.rmtree(failed, ignore_errors=True)
            self.tmp.rename(failed)
            self.tmp = None
            from .validate import ParityError

            raise ParityError(f"exported graph differs from PyTorch: max abs logits diff "
                              f"{report['max_abs_logits']:.3g} > tolerance {report['tolerance']:.3g}; "
                              f"folder left at {failed} (validation.json has every number)")

    def _publish(self) -> None:
        from hoe.core.atomic import publish_folder

        publish_folder(self.tmp, self.out_dir)
        self.tmp = None

    def _packed(self) -> dict:
        """The checkpoint's experts and routers packed per site group in the graph dtype (packed once)."""
        if self.packed is None:
            from hoe.core import packing

            tensors = {k: v.float().numpy() for k, v in {**self.ckpt.experts, **self.ckpt.routers}.items()}
            self.packed = packing.pack(tensors, self.groups, self.dtype)
        return self.packed

    # -- manifest ------------------------------------------------------------------------------------
    def _manifest(self, files: dict[str, str]) -> dict:
        d = self.dims
        experts = [s.name for s in self.hoe_specs or [] if s.name.startswith("experts.")]
        routers = [s.name for s in self.hoe_specs or [] if s.name.startswith("routers.")]
        hf = self.hf_config
        return {
            "format_version": mf.FORMAT_VERSION,
            "model": {"file": mf.MODEL_FILE, "external_data": mf.DATA_FILE, "dtype": self.config.dtype,
                      "opset": self.opset, "variant": "hoe" if self.config.experts else "base",
                      "target": self.config.target, "weights": self.config.weights,
                      "graph_revision": mf.GRAPH_REVISION},
            "architecture": {"model_type": hf["model_type"], "num_layers": d.num_layers,
                             "num_attention_heads": hf["num_attention_heads"], "num_kv_heads": d.num_kv_heads,
                             "head_dim": d.head_dim, "hidden_size": hf["hidden_size"], "vocab_size": d.vocab_size,
                             "max_position_embeddings": hf.get("max_position_embeddings")},
            "inputs": {s.name: s.to_dict() for s in self.inputs},
            "outputs": {s.name: s.to_dict() for s in self.outputs},
            "kv_cache": {**KV_CACHE, "shared_buffer": self.fused,
                         **({"kernel": ATTENTION_KERNEL} if self.config.attention_kernel else {}),
                         **({"dtype": d.kv_cache} if d.kv_cache else {})},
            "hoe": mf.hoe_section(self.hoe_config, experts, routers, getattr(self, "groups", [])),
            "quantization": self.quantization,
            "files": files,
            "tokens": _token_ids(self.base_dir, hf),
            "generation": _generation_defaults(self.base_dir),
            "tools": _tool_versions(),
            "source": {"base": str(self.base_dir.resolve()),
                       "hoe": str(self.ckpt_dir.resolve()) if self.ckpt_dir else None},
        }


# ---------------------------------------------------------------------------- helpers


def _use_eager_attention(model) -> None:
    """Eager attention computes its softmax in fp32 (sdpa's ONNX form would run it in fp16)."""
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation("eager")
    else:
        model.config._attn_implementation = "eager"


def _op_counts(path: Path) -> dict[str, int]:
    """Node count per op type of a saved graph (external data not read), most frequent first."""
    from collections import Counter

    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(Counter(n.op_type for n in graph.node).most_common())


def _set_io_shapes(model, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """Graph I/O names, order and symbolic dims exactly as the manifest declares them."""
    import onnx_ir as ir

    graph = model.graph
    got_in, got_out = [v.name for v in graph.inputs], [v.name for v in graph.outputs]
    if got_in != [s.name for s in inputs] or got_out != [s.name for s in outputs]:
        raise RuntimeError(f"graph I/O differs from the contract: inputs {got_in[:6]}..., outputs {got_out[:4]}...")
    for value, spec in zip([*graph.inputs, *graph.outputs], [*inputs, *outputs]):
        value.shape = ir.Shape(list(spec.shape))


def _copy_tokenizer(base_dir: Path, folder: Path) -> dict[str, str]:
    """Tokenizer files and chat template (extracted from tokenizer_config.json if needed)."""
    files = {}
    for key, name in TOKENIZER_FILES.items():
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, folder / name)
            files[key] = name
    if "chat_template" not in files and "tokenizer_config" in files:
        template = json.loads((folder / TOKENIZER_FILES["tokenizer_config"]).read_text()).get("chat_template")
        if isinstance(template, str):
            (folder / TOKENIZER_FILES["chat_template"]).write_text(template)
            files["chat_template"] = TOKENIZER_FILES["chat_template"]
    if "tokenizer" not in files:
        log.warning("%s has no tokenizer.json: the export can run token ids only", base_dir)
    return files


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _as_list(value) -> list[int]:
    return [] if value is None else [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _token_ids(base_dir: Path, hf: dict) -> dict:
    gen = _read_json(base_dir / "generation_config.json")
    eos = _as_list(gen.get("eos_token_id")) + _as_list(hf.get("eos_token_id"))
    tok_cfg = _read_json(base_dir / "tokenizer_config.json")
    if (base_dir / "tokenizer.json").is_file() and isinstance(tok_cfg.get("eos_token"), str):
        from tokenizers import Tokenizer

        tid = Tokenizer.from_file(str(base_dir / "tokenizer.json")).token_to_id(tok_cfg["eos_token"])
        eos += _as_list(tid)
    eos = list(dict.fromkeys(eos))
    pad = gen.get("pad_token_id", hf.get("pad_token_id"))
    return {"eos_token_ids": eos, "pad_token_id": pad if pad is not None else (eos[0] if eos else 0),
            "bos_token_id": gen.get("bos_token_id", hf.get("bos_token_id"))}


def _generation_defaults(base_dir: Path) -> dict:
    """Greedy unless the model's generation_config samples; then its temperature/top-k/top-p."""
    gen = _read_json(base_dir / "generation_config.json")
    sample = bool(gen.get("do_sample"))
    return {"max_new_tokens": 128, "temperature": float(gen.get("temperature", 1.0)) if sample else 0.0,
            "top_k": int(gen.get("top_k", 0) or 0) if sample else 0,
            "top_p": float(gen.get("top_p", 1.0)) if sample else 1.0,
            "repetition_penalty": float(gen.get("repetition_penalty", 1.0))}


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("hoe", "torch", "transformers", "onnx", "onnxscript", "onnx-ir", "onnxruntime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
