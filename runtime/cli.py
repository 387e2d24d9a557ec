"""`hoe generate` and `hoe chat`: thin argparse commands over hoe.runtime (torch-free)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from hoe.contract.manifest import read_manifest

log = logging.getLogger(__name__)

_CHAT_HELP = """commands: /pref a,b,c  set the preference (and show it); /pref  show it;
          /reset  forget the conversation; /quit  leave (also Ctrl-D)"""


def register(sub) -> None:
    g = sub.add_parser("generate", help="generate text from an exported HoE folder with a preference",
                       description="Generate from prompts with an exported HoE folder (`hoe export`). "
                                   "Text goes to stdout, logs to stderr.")
    g.add_argument("folder", metavar="OUT_DIR", help="exported folder (holds hoe_config.json)")
    g.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="a prompt; repeat for a batch")
    g.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    out = g.add_mutually_exclusive_group()
    out.add_argument("--stream", action="store_true", help="print text as it is generated")
    out.add_argument("--json", action="store_true",
                     help="print a JSON list (text, token_ids, preference, router_mix, timings per prompt)")
    _preference_args(g, "one preference for every prompt, or repeat once per prompt")
    _generation_args(g)
    add_backend_args(g)
    g.set_defaults(func=_generate)

    c = sub.add_parser("chat", help="chat interactively with an exported HoE folder",
                       description="Interactive chat through the model's chat template.\n" + _CHAT_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("folder", metavar="OUT_DIR", help="exported folder (holds hoe_config.json)")
    c.add_argument("--system", help="system message placed before the conversation")
    _preference_args(c, "starting preference (default: equal weights)")
    _generation_args(c)
    add_backend_args(c)
    c.set_defaults(func=_chat)


def _preference_args(p, extra: str) -> None:
    p.add_argument("--preference", action="append", metavar="W1,W2,..",
                   help=f"weights per objective, e.g. 0.2,0.5,0.3 (normalised); {extra}")


def _generation_args(p) -> None:
    p.add_argument("--max-new-tokens", type=int, help="new tokens per prompt at most (default: the export's)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the export's)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, help="nucleus sampling mass in (0, 1]")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages repeats")
    p.add_argument("--seed", type=int, help="seed for reproducible sampling")
    p.add_argument("--stop", action="append", metavar="TEXT", help="stop string (repeatable)")


def add_backend_args(p) -> None:
    p.add_argument("--backend", default="ort",
                   help="ort (onnxruntime, default), torch (PyTorch reference) or trt (TensorRT engine)")
    p.add_argument("--providers", help="onnxruntime execution providers, comma-separated (cpu, cuda, tensorrt)")
    p.add_argument("--threads", type=int, help="intra-op threads (default: the library's)")
    p.add_argument("--no-spinning", action="store_true", help="onnxruntime threads sleep instead of spinning")
    p.add_argument("--base", help="torch backend: Hugging Face base model folder")
    p.add_argument("--hoe", help="torch backend: HoE checkpoint folder (default: the exported one)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the exported files")


def load_model(args):
    from .model import load

    providers = [s.strip() for s in args.providers.split(",") if s.strip()] if args.providers else None
    return load(args.folder, backend=args.backend, providers=providers, threads=args.threads,
                spinning=False if args.no_spinning else None, verify=not args.no_verify, base=args.base,
                hoe=args.hoe)


def _overrides(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=args.stop)


def _config(model, args):
    return model.default_config(**_overrides(args))


def _precheck(args, n_prompts: int, required: bool):
    """What can be refused before the model is opened and hashed: the manifest's structure, sampling
    options, backend options and the preference text (count and length against the objectives).
    -> the --preference validated and routed (hoe.core.preference.Routed), or None when not given."""
    from hoe.contract.folder import Manifest
    from hoe.core.preference import PreferenceRouter

    from .backends import BackendConfig
    from .config import GenerationConfig

    manifest = Manifest(Path(args.folder), read_manifest(args.folder))
    manifest.check()
    GenerationConfig.from_defaults(manifest.generation, **_overrides(args))
    BackendConfig(name=args.backend, threads=args.threads)
    preference = _preference(args)
    if preference is None and not required:
        return None
    routed = PreferenceRouter.from_manifest(manifest).prepare(preference)
    routed.for_batch(n_prompts, name="--preference")
    return routed


def _preference(args):
    """--preference texts -> one vector (given once) or one row per given text."""
    from hoe.core.preference import parse_preference

    if not args.preference:
        return None
    prefs = [parse_preference(p) for p in args.preference]
    return prefs[0] if len(prefs) == 1 else prefs


def _generate(args) -> int:
    preference = _precheck(args, len(args.prompt), required=True)
    model = load_model(args)
    config = _config(model, args)
    if args.stream:
        for i, prompt in enumerate(args.prompt):
            for piece in model.stream(prompt, preference.row(i), config, chat=args.chat):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
        return 0
    results = model.generate(args.prompt, preference, config, chat=args.chat)
    for r in results:
        log.info("%d prompt + %d new tokens (%s): prefill %.1f ms, decode %.2f ms/token", r.timings["prompt_tokens"],
                 r.timings["new_tokens"], r.finish_reason, r.timings["prefill_ms"], r.timings["decode_ms_per_token"])
    if args.json:
        backend = model.describe()
        rows = [dict(r.to_dict(), prompt=p, backend=backend) for p, r in zip(args.prompt, results)]
        json.dump(rows, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for r in results:
            print(r.text)
    return 0


def _chat(args) -> int:
    from .chat import ChatSession

    preference = _precheck(args, 1, required=False)
    model = load_model(args)
    session = ChatSession(model, preference, _config(model, args), system=args.system)
    print(f"chatting with {args.folder} ({model.describe()['backend']}); preference: "
          f"{session.describe_preference()}\n{_CHAT_HELP}", file=sys.stderr)
    return chat_loop(session, input, sys.stdout)


def chat_loop(session, read_line, out) -> int:
    """Read lines until /quit or end of input; commands start with '/'. Returns the exit code."""
    from hoe.core.errors import HoEError

    while True:
        try:
            line = read_line("you> ").strip()
        except EOFError:
            out.write("\n")
            return 0
        if not line:
            continue
        try:
            if line.startswith("/"):
                if _command(session, line, out):
                    return 0
                continue
            out.write("assistant> ")
            for piece in session.send(line):
                out.write(piece)
                out.flush()
            out.write("\n")
        except HoEError as e:
            out.write(f"\nerror: {e}\n")


def _command(session, line: str, out) -> bool:
    """Run one /command; True when the session should end."""
    from hoe.core.preference import parse_preference

    cmd, _, arg = line.partition(" ")
    if cmd in ("/quit", "/exit"):
        return True
    if cmd == "/reset":
        session.reset()
        out.write("conversation cleared\n")
    elif cmd == "/pref":
        if arg.strip():
            session.set_preference(parse_preference(arg))
        out.write(f"preference: {session.describe_preference()}\n")
    else:
        out.write(f"unknown command {cmd}\n{_CHAT_HELP}\n")
    return False
