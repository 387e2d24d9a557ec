"""`hoe train experts|routers|all` (torch imported only when a command runs)."""

from __future__ import annotations

import argparse
import json


def register(sub) -> None:
    p = sub.add_parser("train", help="train HoE experts and routers (the offline recipe)",
                       description="The HoE recipe: best-of-n LoRA experts per objective, then router experts "
                                   "trained with Tchebycheff scalarisation, online mirror descent and policy "
                                   "gradient. Resumable: finished stages in --work are skipped.")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, help_ in (("experts", "best-of-n sampling, scoring and one LoRA expert per objective"),
                        ("routers", "router experts at interior anchors; writes the final checkpoint to --out"),
                        ("all", "experts, then routers")):
        sp = stages.add_parser(name, help=help_, description=help_)
        _add_common(sp)
        if name == "routers":
            sp.add_argument("--experts-from", metavar="CKPT",
                            help="reuse the experts of a checkpoint trained by this recipe (e.g. "
                                 "models/smollm2-hoe) instead of running `hoe train experts`; every router is "
                                 "retrained")
        sp.set_defaults(func=_run)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RecipeConfig JSON (defaults: the recipe of models/smollm2-hoe)")
    p.add_argument("--base", help="Hugging Face base folder (default: SmolLM2-135M-Instruct, prepared once)")
    p.add_argument("--work", help="work folder for resumable state (default: $HOE_CACHE/train/smollm2-hoe)")
    p.add_argument("--out", help="checkpoint folder written by the routers stage (default: models/smollm2-hoe)")
    p.add_argument("--n-prompts", type=int, help="training prompts used")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch threads (default 1)")


def build_config(args):
    from hoe.train.config import RecipeConfig

    data = json.loads(open(args.config, encoding="utf-8").read()) if args.config else {}
    cfg = RecipeConfig.from_dict(data)
    for attr, field in (("base", "base"), ("n_prompts", "n_prompts"), ("seed", "seed"), ("threads", "threads")):
        value = getattr(args, attr)
        if value is not None:
            setattr(cfg, field, value)
    cfg.__post_init__()
    return cfg


def _run(args) -> int:
    from hoe.train.recipe import default_out, default_work, seed_experts, train_experts, train_routers

    cfg = build_config(args)
    work = args.work or default_work()
    if args.stage in ("experts", "all"):
        ckpt = train_experts(cfg, work)
        print(f"experts ready: {ckpt}")
    if getattr(args, "experts_from", None):
        seed_experts(cfg, work, args.experts_from)
    if args.stage in ("routers", "all"):
        out = train_routers(cfg, work, args.out or default_out())
        print(f"wrote HoE checkpoint {out}")
    return 0
