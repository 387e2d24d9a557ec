"""The HoE recipe, stage by stage, resumable (`hoe train experts|routers|all`).

    experts:  sample (best-of-n from the base) → score → expert:<objective> (SFT, one per objective)
              → assemble (experts + constant vertex routers)                      WORK/experts_ckpt
    routers:  rollout_export (ORT rollouts: the model exported once, routers fed as graph inputs every step)
              → routers (every trained anchor together, Tchebycheff/OMD policy gradient)
              → final fp16 checkpoint, training curves, model card               OUT/

A stage whose name is in WORK/state.json is skipped; the sampling, SFT and router stages also resume inside
the stage (per batch / per step). What a later session needs to resume is listed in docs/TRAINING.md.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from hoe.core.atomic import atomic_write_text
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.errors import ConfigError
from hoe.core.objectives import make_objectives

from .config import RecipeConfig
from .data import ChatCodec, default_prompts, load_prompts, package_folder
from .state import RunState

log = logging.getLogger(__name__)

EXPERTS_CKPT = "experts_ckpt"


def default_work() -> Path:
    from hoe.core.smollm2 import cache_dir

    return cache_dir() / "train" / "smollm2-hoe"


def default_out() -> Path:
    return package_folder("hoe.models") / "smollm2-hoe"


def base_dir(cfg: RecipeConfig) -> Path:
    if cfg.base:
        return Path(cfg.base)
    from hoe.core.smollm2 import prepare_base

    return prepare_base()


class Timer:
    """Seconds spent per stage, accumulated across resumed runs in WORK/timings.json."""

    def __init__(self, work: Path) -> None:
        self.path = work / "timings.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def __call__(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.data[stage] = round(self.data.get(stage, 0.0) + time.perf_counter() - t0, 1)
            atomic_write_text(self.path, json.dumps(self.data, indent=2) + "\n")


def train_experts(cfg: RecipeConfig, work: str | Path) -> Path:
    """Stages sample, score, expert:<name>..., assemble. -> WORK/experts_ckpt"""
    from hoe.core.assemble import build_checkpoint
    from hoe.core.experts import experts_from_peft
    from hoe.core.loading import load_base

    from .experts import best_of_n, reward_summary, sample_answers, save_json, score_candidates, sft_adapter

    run = RunState(work, cfg)
    torch.set_num_threads(cfg.threads)
    timer = Timer(run.work)
    folder = base_dir(cfg)
    base, codec = load_base(folder), ChatCodec.from_folder(folder)
    objectives = make_objectives(cfg.objectives)
    prompts = load_prompts(cfg.train_prompts or default_prompts("train"), cfg.n_prompts)
    if not run.is_done("sample"):
        timer("sample", sample_answers, base, codec, prompts, cfg.sample, cfg.seed, run.work / "samples.jsonl")
        run.mark_done("sample")
    if not run.is_done("score"):
        rows = [json.loads(x) for x in (run.work / "samples.jsonl").read_text().splitlines()]
        scored = timer("score", score_candidates, rows, objectives, cfg.sample.sentence_prefixes)
        save_json(run.work / "scored.json", scored)
        save_json(run.work / "rewards.json", reward_summary(scored))
        run.mark_done("score")
    scored = json.loads((run.work / "scored.json").read_text())
    adapters = []
    for i, name in enumerate(cfg.objectives):
        stage, out = f"expert:{name}", run.work / "adapters" / name.replace(":", "_")
        if not run.is_done(stage):
            timer(stage, sft_adapter, base, codec, best_of_n(scored, i), cfg.expert, cfg.seed + 1 + i, out, run,
                  stage)
            run.mark_done(stage)
        adapters.append(out)
    ckpt_dir = run.work / EXPERTS_CKPT
    if not run.is_done("assemble"):
        experts, modules = experts_from_peft(adapters)
        ckpt = build_checkpoint(base, experts, modules, list(cfg.objectives))
        ckpt.save(ckpt_dir, overwrite=True)
        run.mark_done("assemble")
    return ckpt_dir


def router_setup(base, experts_ckpt: HoECheckpoint, cfg: RecipeConfig):
    """HoE model with vertex anchors (constant routers) + the trained anchors (routers to train)."""
    from hoe.core.assemble import in_features
    from hoe.core.config import HoEConfig
    from hoe.core.model import HoEModel
    from hoe.core.routers import constant_routers, trainable_routers, vertex_anchors

    ec = experts_ckpt.config
    anchors = vertex_anchors(ec.n_objectives) + cfg.trained_anchors
    config = HoEConfig(objectives=ec.objectives, expert_prefs=ec.expert_prefs, anchors=anchors,
                       target_modules=ec.target_modules, rank=ec.rank, expert_names=ec.expert_names, base=ec.base)
    feats = in_features(base, ec.target_modules)
    routers = constant_routers(ec.target_modules, feats, ec.expert_prefs, anchors, config.n_active)
    trained = trainable_routers(ec.target_modules, feats, ec.expert_prefs, anchors, config.n_active)
    rows = list(range(ec.n_objectives, len(anchors)))
    for name, t in routers.items():
        t[rows] = trained[name][rows]
    return HoEModel(base, config, experts_ckpt.experts, routers)


def seed_experts(cfg: RecipeConfig, work: str | Path, checkpoint: str | Path) -> Path:
    """Start WORK from a checkpoint this recipe trained (its experts and its best-of-n ideal point, from its
    training.json) instead of re-running the experts stage; the routers stage then retrains every router.

    The checkpoint's sampling and expert recipe must equal `cfg`'s, so the run is the one `hoe train all`
    would make. -> WORK/experts_ckpt
    """
    checkpoint = Path(checkpoint)
    summary_path = checkpoint / "training.json"
    if not summary_path.is_file():
        raise ConfigError(f"--experts-from {checkpoint}: expected a checkpoint written by `hoe train` "
                          f"(with training.json), found no {summary_path.name}")
    summary = json.loads(summary_path.read_text())
    theirs = RecipeConfig.from_dict(summary["recipe"]).to_dict()
    ours = cfg.to_dict()
    differ = [k for k in ("base", "objectives", "train_prompts", "n_prompts", "seed", "sample", "expert")
              if theirs[k] != ours[k]]
    if differ:
        raise ConfigError(f"--experts-from {checkpoint}: its experts were trained with another recipe "
                          f"(fields {differ} differ); expected the recipe of this run")
    run = RunState(work, cfg)
    if run.is_done("assemble"):
        return run.work / EXPERTS_CKPT
    ckpt = HoECheckpoint.load(checkpoint)  # committed in fp16; the recipe trains in fp32 like `assemble` writes
    as_fp32 = lambda d: {k: v.float() for k, v in d.items()}  # noqa: E731
    HoECheckpoint(ckpt.config, as_fp32(ckpt.experts), as_fp32(ckpt.routers)).save(run.work / EXPERTS_CKPT,
                                                                                 overwrite=True)
    atomic_write_text(run.work / "rewards.json", json.dumps(summary["best_of_n"], indent=2) + "\n")
    for stage in ["sample", "score"] + [f"expert:{n}" for n in cfg.objectives] + ["assemble"]:
        run.mark_done(stage)
    run.log({"stage": "seed", "experts_from": str(checkpoint), "seconds": summary.get("seconds", {})})
    return run.work / EXPERTS_CKPT


ROUTER_STAGE = "routers"
ROLLOUT_EXPORT = "rollout_export"


def train_routers(cfg: RecipeConfig, work: str | Path, out: str | Path, force: bool = True) -> Path:
    """Stages rollout_export (ORT rollouts only) and routers (every trained anchor), then the fp16 checkpoint,
    curves and card in OUT."""
    from hoe.core.loading import load_base

    from .rollout import make_rollouts
    from .routers import train_anchors

    run = RunState(work, cfg)
    if not run.is_done("assemble"):
        raise ConfigError(f"{run.work} has no trained experts yet: run `hoe train experts` first")
    torch.set_num_threads(cfg.threads)
    timer = Timer(run.work)
    folder = base_dir(cfg)
    base, codec = load_base(folder), ChatCodec.from_folder(folder)
    model = router_setup(base, HoECheckpoint.load(run.work / EXPERTS_CKPT), cfg)
    objectives = make_objectives(cfg.objectives)
    prompts = load_prompts(cfg.train_prompts or default_prompts("train"), cfg.n_prompts)
    z_star = np.asarray(json.loads((run.work / "rewards.json").read_text())["best_of_n_mean"])
    export_dir = None
    if cfg.router.rollout == "ort":
        export_dir = run.work / ROLLOUT_EXPORT
        if not run.is_done(ROLLOUT_EXPORT) or not (export_dir / "hoe_config.json").is_file():  # a cache
            timer(ROLLOUT_EXPORT, export_for_rollouts, model, folder, run.work, export_dir)
            run.mark_done(ROLLOUT_EXPORT)
    m = len(cfg.objectives)
    rows = list(range(m, m + len(cfg.trained_anchors)))
    if not run.is_done(ROUTER_STAGE):
        rollouts = make_rollouts(cfg.router.rollout, model, export_dir, cfg.threads)
        timer(ROUTER_STAGE, train_anchors, model, codec, prompts, objectives, rows, z_star, cfg.router,
              cfg.seed + 100, run, ROUTER_STAGE, rollouts)
        run.mark_done(ROUTER_STAGE)
    else:  # restore what the stage trained
        from .routers import load_router_state, make_optimizer, router_params

        params = router_params(model)
        if load_router_state(run.work / ROUTER_STAGE, params, make_optimizer(params, cfg.router)) is None:
            raise ConfigError(f"{run.work}/state.json marks stage {ROUTER_STAGE} done but "
                              f"{run.work / ROUTER_STAGE} holds no router state")
    return finish(model, run, Path(out), force)


def export_for_rollouts(model, base_folder: Path, work: Path, export_dir: Path) -> Path:
    """ONNX export of the model being trained (experts fixed; routers are graph inputs, fed every step).

    Only the base and the experts matter (routers are rebound each step), so the export is made once per work
    folder; it is a cache: a fresh machine rebuilds it from WORK/experts_ckpt (deterministic, minutes).
    """
    from hoe.export.onnx_export import ExportConfig, export

    ckpt_dir = work / "rollout_ckpt"
    tensors = model.named_tensors()
    part = lambda prefix: {k: v.detach() for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    HoECheckpoint(model.config, part("experts."), part("routers.")).save(ckpt_dir, overwrite=True)
    export(base_folder, ckpt_dir, export_dir, ExportConfig(validate=False, force=True, threads=1))
    return export_dir


def finish(model, run: RunState, out: Path, force: bool) -> Path:
    """Write OUT: fp16 checkpoint, training curves, training summary and model card."""
    from .card import write_card
    from .plot import plot_curves

    half = lambda d: {k: (v.detach().float() if k.endswith("mask") else v.detach().half()) for k, v in d.items()}
    tensors = model.named_tensors()
    experts = {k: v for k, v in tensors.items() if k.startswith("experts.")}
    routers = {k: v for k, v in tensors.items() if k.startswith("routers.")}
    ckpt = HoECheckpoint(model.config, half(experts), half(routers))
    ckpt.validate()  # the base inside `model` is wrapped in HoELinears; identity was checked at assembly
    if out.exists() and not force:
        raise ConfigError(f"{out} exists; pass --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.ckpt"
    ckpt.save(staging, overwrite=True)
    for name in ("hoe.json", "experts.safetensors", "routers.safetensors"):
        (staging / name).replace(out / name)
    staging.rmdir()
    plot_curves(run.records(), run.config.objectives, out / "training_curves.png", run.config.trained_anchors)
    summary = training_summary(run)
    atomic_write_text(out / "training.json", json.dumps(summary, indent=2) + "\n")
    write_card(out, run.config, summary)
    log.info("wrote %s", out)
    return out


def training_summary(run: RunState) -> dict:
    timings = json.loads((run.work / "timings.json").read_text()) if (run.work / "timings.json").is_file() else {}
    rewards = json.loads((run.work / "rewards.json").read_text())
    recs = run.records(ROUTER_STAGE)
    anchors = run.config.trained_anchors
    routers = {}
    for a, anchor in enumerate(anchors):
        per = [r["anchors"][a] for r in recs if "anchors" in r]
        if per:
            head, tail = per[:3], per[-3:]
            mean = lambda rows, key: np.mean([r[key] for r in rows], 0)  # noqa: E731
            routers[f"anchor:{a}"] = {"anchor": anchor, "steps": len(per),
                                      "first_3_steps": mean(head, "rewards").round(4).tolist(),
                                      "last_3_steps": mean(tail, "rewards").round(4).tolist()}
    speed = [r["rollout_tokens_per_s"] for r in recs if "rollout_tokens_per_s" in r]
    seeds = run.records("seed")  # `--experts-from`: the experts stage ran in the checkpoint's own run
    reused = {} if not seeds else {
        "checkpoint": Path(seeds[-1]["experts_from"]).name,
        "seconds": {k: v for k, v in seeds[-1]["seconds"].items() if not k.startswith("router")}}
    return {"recipe": run.config.to_dict(), "seconds": timings, "total_seconds": round(sum(timings.values()), 1),
            **({"experts_from": reused} if reused else {}),
            "best_of_n": rewards, "routers": routers,
            "rollout": {"backend": run.config.router.rollout,
                        "tokens_per_s_median": round(float(np.median(speed)), 2) if speed else None}}
