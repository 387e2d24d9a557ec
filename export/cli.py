"""`hoe export`, `hoe swap-experts` and `hoe trt-check` (torch imported only when they run)."""

from __future__ import annotations

EXPORT_HELP = """\
Export a base model and a HoE checkpoint to an ONNX folder for the runtime: base weights baked in,
LoRA experts and routers as graph inputs (swap them without re-export), KV cache in/out, and
hoe_config.json describing every input/output. The export ends (--target tensorrt) with a static
TensorRT 10.3 readiness check, and always with a parity check (onnxruntime CPU vs PyTorch, prefill +
decode steps, batch 2 with left padding, 3 preferences) written to OUT/validation.json; exit status 1 if it fails."""


def register(sub) -> None:
    p = sub.add_parser("export", help="export base + HoE checkpoint to ONNX (validated against PyTorch)",
                       description=EXPORT_HELP)
    p.add_argument("--base", required=True, metavar="BASE_DIR",
                   help="Hugging Face base model folder (safetensors), or a .gguf file (converted once, cached)")
    p.add_argument("--hoe", metavar="CKPT_DIR", help="HoE checkpoint folder (hoe.json, experts/routers safetensors)")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="output folder (refused if it exists, see --force)")
    p.add_argument("--opset", type=int, default=20, help="ONNX opset (default 20; 18-20 for TensorRT 10.3)")
    p.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                   help="fp32, or fp16 weights/activations with softmax, norms and router softmax in fp32")
    p.add_argument("--target", choices=("ort-cpu", "ort-cuda", "tensorrt"), default="ort-cpu",
                   help="what the graph is built for (docs/GRAPH.md): ort-cpu / ort-cuda = onnxruntime graph with "
                        "fused attention (GroupQueryAttention, shared KV buffer) and fused RMSNorm (default); "
                        "tensorrt = standard ONNX ops only, checked for TensorRT 10.3 (int8/int4: MatMulNBits "
                        "for ort-*, block-wise DequantizeLinear at opset 21 for tensorrt)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-validate", action="store_true", help="skip the onnxruntime vs PyTorch parity check")
    p.add_argument("--no-experts", action="store_true",
                   help="export the plain base graph (no router_mix, no expert/router inputs) for baselines")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for the validation (default 2)")
    q = p.add_argument_group("base weight precision (export/quantize.py, docs/FORMAT.md)")
    q.add_argument("--weights", choices=("fp32", "fp16", "int8", "int4"), default="fp32",
                   help="base linear weights and the tied embedding/lm_head: fp32 (as the graph dtype), fp16 "
                        "storage, or block-wise int8/int4 weight-only quantization (experts/routers stay inputs)")
    q.add_argument("--block-size", type=int, default=32, help="int8/int4: inputs per scale (power of 2 >= 16)")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="int8/int4: scale only, zero point 2^(bits-1) (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="int8/int4: a scale and a zero point per block")
    q.add_argument("--block-offsets", dest="offsets", action="store_true",
                   help="int8/int4 on onnxruntime: the min-max grid with a float offset per block (GGUF Q4_1's "
                        "grid: a base converted from a Q4_1 GGUF is kept exactly) instead of absmax; one small "
                        "fp32 product per projection more. The embedding table keeps the absmax grid")
    q.add_argument("--embedding-weights", dest="table", choices=("fp32", "fp16", "int8", "int4"), default="",
                   help="the embedding table and a tied lm_head (default: as --weights)")
    q.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                   help="MatMulNBits activations on onnxruntime: 0 fp32 (exact), 4 int8 (default, fastest on CPU)")
    q.add_argument("--bake-experts", action="store_true",
                   help="onnxruntime targets: experts and routers become initializers fused with the base "
                        "projections (quantized like them at int8/int4; faster on CPU; swap-experts then rewrites "
                        "the graph, same E, r, K)")
    q.add_argument("--mixture-kernel", action="store_true",
                   help="with --bake-experts, target ort-cpu, fp32 activations: each site group's gating and lora_B "
                        "products run as one node of hoe's own onnxruntime kernel (built with hoe; fewer nodes per "
                        "token; lora_B on an int8 grid, fp32 weights included)")
    p.add_argument("--attention-kernel", action="store_true",
                   help="target ort-cpu, fp32 activations: each layer's attention runs as hoe's own onnxruntime "
                        "kernel in place of GroupQueryAttention (built with hoe; same shared KV buffer, the cache "
                        "read once per KV head; docs/GRAPH.md)")
    p.add_argument("--linear-kernel", action="store_true",
                   help="with --weights int4 (symmetric, block size a multiple of 32), target ort-cpu, fp32 "
                        "activations: the int4 products (base linears, baked experts' fused products, lm_head) run "
                        "as hoe's own onnxruntime kernel in place of MatMulNBits (built with hoe; the same numbers, "
                        "a layout read at memory speed; docs/GRAPH.md)")
    p.add_argument("--kv-cache", choices=["auto", "int8"], default="auto",
                   help="KV cache precision. auto: the graph's dtype. int8 (with --attention-kernel): each cached "
                        "token row as int8 values and one fp32 scale, about a quarter of the fp32 cache's bytes read "
                        "per step at long context; a step's own tokens attend unrounded (docs/FORMAT.md)")
    p.set_defaults(func=_export)

    w = sub.add_parser("swap-experts", help="install another HoE checkpoint's experts/routers, no re-export",
                       description="Pack the experts and routers of CKPT_DIR (same target modules; E, r and K may "
                                   "differ) into EXPORT_DIR's layout and replace its experts/routers files, "
                                   "hoe.json and hashes atomically. With --validate, re-run the parity check "
                                   "against PyTorch (needs the export extra and the base model).")
    w.add_argument("export_dir", metavar="EXPORT_DIR", help="exported HoE folder (hoe export)")
    w.add_argument("ckpt_dir", metavar="CKPT_DIR", help="HoE checkpoint folder (hoe.json, experts/routers)")
    w.add_argument("--validate", action="store_true", help="parity check afterwards (writes validation.json)")
    w.add_argument("--base", metavar="BASE_DIR", help="base model folder for --validate (default: source.base)")
    w.add_argument("--threads", type=int, default=2, help="CPU threads for the validation (default 2)")
    w.set_defaults(func=_swap)

    t = sub.add_parser("trt-check", help="static TensorRT 10.3 readiness check of an ONNX file or exported folder",
                       description="Check op types, domains, dtypes and constant-input restrictions of an "
                                   "ONNX graph against TensorRT 10.3's ONNX parser (no TensorRT needed).")
    t.add_argument("path", help="model.onnx or an exported folder")
    t.set_defaults(func=_trt_check)


def _export(args) -> int:
    from .onnx_export import ExportConfig, export, export_base
    from .validate import ParityError, format_report

    if not args.hoe and not args.no_experts:
        print("hoe export: error: --hoe CKPT_DIR is required unless --no-experts")
        return 2
    config = ExportConfig(opset=args.opset, dtype=args.dtype, experts=not args.no_experts,
                          validate=not args.no_validate, force=args.force, threads=args.threads,
                          weights=args.weights, block_size=args.block_size, symmetric=args.symmetric,
                          accuracy_level=args.accuracy_level, target=args.target, table=args.table,
                          bake_experts=args.bake_experts, offsets=args.offsets,
                          mixture_kernel=args.mixture_kernel, attention_kernel=args.attention_kernel,
                          kv_cache=args.kv_cache, linear_kernel=args.linear_kernel)
    try:
        if args.no_experts:
            result = export_base(args.base, args.out, config, ckpt_dir=args.hoe)
        else:
            result = export(args.base, args.hoe, args.out, config)
    except ParityError as e:
        print(f"hoe export: validation failed: {e}")
        return 1
    _print_result(result, format_report)
    return 0


def _swap(args) -> int:
    from hoe.contract.manifest import load_manifest, swap_experts
    from hoe.core.errors import ConfigError

    from .validate import ParityError

    if args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    check = None
    if args.validate:  # the new set is validated staged, before it replaces the old one
        base = args.base or load_manifest(args.export_dir).get("source", {}).get("base")
        if not base:
            raise ConfigError("--validate needs --base BASE_DIR (the export records no source.base)")
        check = _swap_validation(base, args.ckpt_dir, args.threads)
    try:
        manifest = swap_experts(args.export_dir, args.ckpt_dir, check=check)
    except ParityError as e:
        print(f"hoe swap-experts: validation failed, nothing installed: {e}")
        return 1
    hoe = manifest["hoe"]
    print(f"installed {args.ckpt_dir} into {args.export_dir}: E={hoe['n_experts']}, r={hoe['rank']}, "
          f"K={hoe['n_routers']}, {len(hoe['groups'])} site groups")
    return 0


def _swap_validation(base, ckpt_dir, threads: int):
    """check(staged_folder) for swap_experts: the parity check; ParityError refuses the new set."""
    def check(staged) -> None:
        from .validate import ValidationConfig, check_report, format_report, validate_export

        report = validate_export(staged, base, ckpt_dir, ValidationConfig(threads=threads))
        print(format_report(report))
        check_report(report)
    return check


def _print_result(result, format_report) -> None:
    total = sum(result.seconds.values())
    stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"exported {result.out_dir} in {total:.1f}s ({stages})")
    for name, size in result.file_sizes.items():
        print(f"  {name:<28} {size / 1e6:10.2f} MB")
    ops = ", ".join(f"{k} {v}" for k, v in result.trt["op_counts"].items())
    if result.trt.get("skipped"):
        print(f"TensorRT readiness: not checked ({result.trt['skipped']}; export --target tensorrt for TensorRT)")
    else:
        print(f"TensorRT {result.trt['trt_version']} readiness: {'READY' if result.trt['ready'] else 'NOT READY'}")
    problems = result.trt["problems"]
    for problem in problems[:5]:
        print(f"  - {problem}")
    if len(problems) > 5:  # e.g. every MatMulNBits of an onnxruntime-target int4 graph
        print(f"  ... {len(problems) - 5} more (hoe trt-check {result.out_dir} lists them)")
    print(f"ops: {ops}")
    if result.validation is not None:
        print(format_report(result.validation))
    else:
        print("validation skipped (--no-validate)")


def _read_onnx(path):
    """The ONNX proto of `path` (external data not read), else CheckpointError (missing file, garbage)."""
    from hoe.core.errors import CheckpointError

    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}; expected model.onnx or an exported folder")
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), format="protobuf", load_external_data=False)  # not guessed from the suffix
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is not a readable ONNX model ({e}); expected a file saved by onnx") from e
    if not model.ir_version or not model.HasField("graph"):  # protobuf parses some garbage as an empty message
        raise CheckpointError(f"{path} is not a readable ONNX model (no ir_version or graph); expected a file "
                              "saved by onnx")
    return model


def _trt_check(args) -> int:
    from pathlib import Path

    from hoe.contract.manifest import MODEL_FILE

    from .trt_ops import check_model

    path = Path(args.path)
    report = check_model(_read_onnx(path / MODEL_FILE if path.is_dir() else path))
    print(report.summary())
    print("ops: " + ", ".join(f"{k} {v}" for k, v in report.op_counts.items()))
    return 0 if report.ready else 1
