"""`hoe demo` (torch imported only when it runs)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="the embedded SmolLM2-HoE: one prompt at three preferences, scores, speed",
                       description="Prepare SmolLM2-135M-Instruct (cached), export it with the committed HoE "
                                   "checkpoint models/smollm2-hoe (cached), answer one prompt at three contrasting "
                                   "preferences with the torch-free runtime, print each answer with its objective "
                                   "scores, then the decode speed of the runtime against PyTorch.")
    p.add_argument("--prompt", help="the prompt (default: a held-out style question)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--checkpoint", help="HoE checkpoint folder (default: models/smollm2-hoe)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(max_new_tokens=args.max_new_tokens, checkpoint=args.checkpoint or "", threads=args.threads)
    if args.prompt:
        cfg.prompt = args.prompt
    run_demo(cfg)
    return 0
