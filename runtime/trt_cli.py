"""`hoe build-engine` (torch-free: tensorrt is imported only when the build runs)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "build-engine", help="build a TensorRT engine for an exported folder (run it on the target device)",
        description="Build a TensorRT engine from an exported folder (`hoe export`) with two optimisation "
                    "profiles (prefill, decode). Experts, rank and routers stay dynamic up to the --max-* values, "
                    "so experts/routers of another size swap in without a rebuild. Writes OUT_DIR/trt/model.engine, "
                    "engine.json (TensorRT version, GPU, profiles, build time) and timing.cache (reused by the next "
                    "build on this device; one TensorRT refuses, e.g. from another GPU, is ignored and replaced). "
                    "An engine only runs with the TensorRT release and the GPU (compute capability) that built it.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="exported folder (holds hoe_config.json and model.onnx)")
    p.add_argument("--max-batch", type=int, default=1, help="rows per step at most (default 1)")
    p.add_argument("--max-context", type=int, default=None,
                   help="prompt + generated tokens per row at most; KV buffers have this length "
                        "(default 2048, or the model's context if shorter)")
    p.add_argument("--max-prefill", type=int, default=None,
                   help="prompt tokens per prefill step; longer prompts go in chunks (default 512, at most "
                        "--max-context)")
    p.add_argument("--max-experts", type=int, default=0, help="LoRA experts E at most (default: as exported)")
    p.add_argument("--max-rank", type=int, default=0, help="LoRA rank r at most (default: as exported)")
    p.add_argument("--max-routers", type=int, default=0, help="router experts K at most (default: as exported)")
    p.add_argument("--opt-batch", type=int, default=1, help="batch the kernels are tuned for (default 1)")
    p.add_argument("--workspace-mb", type=int, default=2048, help="builder workspace limit in MiB (default 2048)")
    p.add_argument("--fp16", action="store_true",
                   help="fp16 kernels for an fp32 graph (TensorRT 10 only; with TensorRT 11 export --dtype fp16)")
    p.add_argument("--optimization-level", type=int, choices=range(6), default=None,
                   help="TensorRT builder optimisation level 0-5 (default: TensorRT's, 3)")
    p.add_argument("--engine-dir", default=None, help="write the engine here instead of OUT_DIR/trt")
    p.add_argument("--verbose-trt", action="store_true", help="TensorRT's verbose build log")
    p.set_defaults(func=_build_engine)


def _context_defaults(args) -> tuple[int, int]:
    """--max-context / --max-prefill, defaulting to 2048 / 512 clipped to the model's own context."""
    from hoe.contract.manifest import read_manifest

    context = args.max_context
    if context is None:
        manifest = read_manifest(args.out_dir)
        arch = manifest.get("architecture", {}) if isinstance(manifest, dict) else {}
        context = min(2048, int(arch.get("max_position_embeddings") or 2048))
    return context, args.max_prefill if args.max_prefill is not None else min(512, context)


def _build_engine(args) -> int:
    from hoe.contract.engine import EngineLimits

    from .backends.trt_build import BuildConfig, build_engine

    context, prefill = _context_defaults(args)
    limits = EngineLimits(max_batch=args.max_batch, max_context=context, max_prefill=prefill,
                          max_experts=args.max_experts, max_rank=args.max_rank, max_routers=args.max_routers,
                          opt_batch=args.opt_batch)
    cfg = BuildConfig(limits=limits, workspace_mb=args.workspace_mb, fp16=args.fp16,
                      optimization_level=args.optimization_level, engine_dir=args.engine_dir, verbose=args.verbose_trt)
    out = build_engine(args.out_dir, cfg)
    print(f"wrote TensorRT engine {out}")
    return 0
