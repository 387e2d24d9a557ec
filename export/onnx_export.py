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
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoe.core.config import HoEConfig, JsonConfig
from hoe.core.errors import CheckpointError, ConfigError, UnsupportedModelError

from . import manifest as mf
from .io_spec import KV_CACHE, ROUTER_MIX, ModelDims, TensorSpec, expert_tensor_specs, graph_inputs, graph_outputs
from .quantize import QuantConfig

log = logging.getLogger(__name__)

DTYPES = {"fp32": "float32", "fp16": "float16"}
MIN_OPSET = 18  # torch.onnx dynamo export of the KV-cache graph fails at 17
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
    weights: str = "fp32"  # base weight precision: fp32 | fp16 | int8 | int4 (quantize.py)
    block_size: int = 32  # int8/int4: inputs per quantization block
    symmetric: bool = True  # int8/int4: False adds a zero point per block
    accuracy_level: int = 4  # MatMulNBits activations: 0 exact fp32, 4 int8 (fastest on CPU)
    target: str = "ort-cpu"  # ort-cpu | ort-cuda | tensorrt: the runtime the graph is built for
    table: str = ""  # embedding table / tied lm_head precision: "" = as `weights`, else fp32|fp16|int8|int4

    def __post_init__(self) -> None:
        self.quant_config()  # refuses bad weights/target/block-size combinations before any work
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.opset < MIN_OPSET:
            raise ConfigError(f"opset must be >= {MIN_OPSET} (KV-cache export fails below), got {self.opset}")

    def quant_config(self) -> QuantConfig:
        return QuantConfig(weights=self.weights, block_size=self.block_size, symmetric=self.symmetric,
                           accuracy_level=self.accuracy_level, target=self.target, table=self.table)


@dataclass
class ExportResult:
    out_dir: Path
    seconds: dict[str, float] = field(default_factory=dict)  # per stage
    file_sizes: dict[str, int] = field(default_factory=dict)
    trt: dict = field(default_factory=dict)  # trt_ops.TrtReport.to_dict()
    validation: dict | None = None  # validation.json content


# ---------------------------------------------------------------------------- checks before work


def check_base_dir(base_dir: Path) -> dict:
    """config.json of a supported decoder (torch-free)."""
    from hoe.core.model import SUPPORTED_MODEL_TYPES

    path = base_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"base model folder {base_dir} lacks config.json")
    config = json.loads(path.read_text())
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"base model_type {model_type!r} ({config.get('architectures')}) cannot be exported; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return config


def check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not force:
        raise CheckpointError(f"output folder {out_dir} exists; pass --force (force=True) to replace it")


# ---------------------------------------------------------------------------- the export


def export(base_dir, ckpt_dir, out_dir, config: ExportConfig | None = None) -> ExportResult:
    """Export base + HoE checkpoint to `out_dir` (see the module docstring). Returns timings, sizes, results.

    Raises CheckpointError / UnsupportedModelError / ShapeMismatchError / ConfigError before any work
    when the request cannot be served, and validate.ParityError when validation fails (the folder is
    then left at `OUT_DIR.failed` for inspection, OUT_DIR is untouched).
    """
    config = config or ExportConfig()
    return _Export(Path(base_dir), Path(ckpt_dir) if ckpt_dir else None, Path(out_dir), config).run()


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
        check_out_dir(self.out_dir, self.config.force)
        self.hf_config = check_base_dir(self.base_dir)
        if self.config.experts and self.ckpt_dir is None:
            raise ConfigError("a HoE checkpoint folder is required unless experts=False (--no-experts)")
        self.hoe_config = HoEConfig.load(self.ckpt_dir / mf.HOE_FILE) if self.ckpt_dir else None

    def _load(self) -> None:
        from hoe.core.checkpoint import HoECheckpoint
        from hoe.core.loading import load_base

        self.model = load_base(self.base_dir, self.config.dtype)
        _use_eager_attention(self.model)
        self.ckpt = HoECheckpoint.load(self.ckpt_dir) if self.ckpt_dir else None
        if self.ckpt is not None:
            self.ckpt.validate(self.model)  # module names, shapes and base identity, before any tracing
        cfg = self.model.config
        self.dims = ModelDims(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                              head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
                              vocab_size=cfg.vocab_size, dtype=self.dtype)
        self.modules = list(self.hoe_config.target_modules) if self.config.experts else []
        self.features = {m: (self.model.get_submodule(m).in_features, self.model.get_submodule(m).out_features)
                         for m in self.modules}

    def _trace(self) -> None:
        from .graph import mark_modules, trace

        mark_modules(self.model, self.modules)
        self.base_inputs = graph_inputs(self.dims, None)
        self.outputs = graph_outputs(self.dims)
        self.graph = trace(self.model, self.base_inputs, self.outputs, self.dims.num_layers,
                           self.dims.vocab_size, self.config.opset)
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

        optimize(self.graph)
        _set_io_shapes(self.graph, self.inputs, self.outputs)

    def _quantize(self) -> None:
        from .quantize import quantize_model

        self.quantization = quantize_model(self.graph, self.config.quant_config())
        self.opset = self.graph.opset_imports.get("", self.config.opset)

    def _save(self) -> None:
        import onnx_ir as ir

        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(dir=self.out_dir.parent, prefix=f".{self.out_dir.name}.tmp"))
        ir.save(self.graph, self.tmp / mf.MODEL_FILE, external_data=mf.DATA_FILE)
        del self.graph
        files = {}
        if self.ckpt is not None and self.config.experts:
            tensors = {k: v.float().numpy() for k, v in {**self.ckpt.experts, **self.ckpt.routers}.items()}
            files.update(mf.write_packed(self.tmp, tensors, self.groups, self.dtype))
        if self.ckpt_dir is not None:
            shutil.copyfile(self.ckpt_dir / mf.HOE_FILE, self.tmp / mf.HOE_FILE)
            files["hoe"] = mf.HOE_FILE
        files.update(_copy_tokenizer(self.base_dir, self.tmp))
        self.manifest = mf.write_manifest(self.tmp, self._manifest(files))
        self.result.file_sizes = {p.name: p.stat().st_size for p in sorted(self.tmp.iterdir())}

    def _tensorrt(self) -> None:
        from .trt_ops import check_model

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
        from hoe.core.checkpoint import replace_folder

        replace_folder(self.tmp, self.out_dir)
        self.tmp = None

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
                      "weights": self.config.weights},
            "architecture": {"model_type": hf["model_type"], "num_layers": d.num_layers,
                             "num_attention_heads": hf["num_attention_heads"], "num_kv_heads": d.num_kv_heads,
                             "head_dim": d.head_dim, "hidden_size": hf["hidden_size"], "vocab_size": d.vocab_size,
                             "max_position_embeddings": hf.get("max_position_embeddings")},
            "inputs": {s.name: s.to_dict() for s in self.inputs},
            "outputs": {s.name: s.to_dict() for s in self.outputs},
            "kv_cache": dict(KV_CACHE),
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
