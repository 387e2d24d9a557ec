"""`hoe assemble` and `hoe convert-gguf` (torch imported only when they run)."""

from __future__ import annotations


def _split(text: str) -> list[str]:
    """'a,b,c' -> ['a', 'b', 'c']; empty names are kept so that `a,,b` is refused, not read as `a,b`."""
    return [s.strip() for s in text.split(",")]


def register(sub) -> None:
    p = sub.add_parser("assemble", help="build a HoE checkpoint (experts + constant vertex routers)",
                       description="Build a HoE checkpoint folder from a base model and one expert per objective: "
                                   "PEFT LoRA adapter folders, or fully fine-tuned checkpoints compressed by task-SVD.")
    p.add_argument("--base", required=True,
                   help="Hugging Face base model folder (safetensors), or a .gguf file (converted once, cached)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--peft", nargs="+", metavar="DIR", help="PEFT LoRA adapter folders, one per objective")
    src.add_argument("--finetuned", nargs="+", metavar="DIR", help="fine-tuned checkpoints, one per objective")
    p.add_argument("--rank", type=int, help="task-SVD rank (with --finetuned)")
    p.add_argument("--objectives", required=True, type=_split, help="objective names, e.g. helpful,positive,concise")
    p.add_argument("--out", required=True, help="output checkpoint folder")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_assemble)

    g = sub.add_parser("convert-gguf", help="convert a GGUF base model into a Hugging Face folder",
                       description="Dequantise GGUF_FILE (any architecture transformers reads from GGUF) into a "
                                   "Hugging Face fp32 safetensors folder with its tokenizer, usable as --base. "
                                   "An OUT_DIR already converted from the same file is reused; the folder appears "
                                   "only once complete. --base of assemble/export also takes a .gguf directly "
                                   "(converted once into the cache).")
    g.add_argument("gguf_file", metavar="GGUF_FILE", help="the .gguf file")
    g.add_argument("out_dir", metavar="OUT_DIR", help="output Hugging Face folder")
    g.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds something else")
    g.set_defaults(func=_convert_gguf)


def _assemble(args) -> int:
    from hoe.core.assemble import assemble

    out = assemble(args.base, args.objectives, args.out, peft=args.peft, finetuned=args.finetuned,
                   rank=args.rank, force=args.force)
    print(f"wrote HoE checkpoint {out}")
    return 0


def _convert_gguf(args) -> int:
    from hoe.core.gguf import convert_gguf

    out = convert_gguf(args.gguf_file, args.out_dir, force=args.force)
    print(f"wrote Hugging Face base folder {out}")
    return 0
