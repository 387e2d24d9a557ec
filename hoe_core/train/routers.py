"""Level-2 router experts: train the routers of interior anchors; base and LoRA experts stay frozen.

    for each step:  prompts ─► k answers each from the HoE model routed by anchor k only (router_mix = e_k)
                    ─► rewards R [P, k, m] ─► OMD weights w (Tchebycheff, tchebycheff.py)
                    ─► A = Σ_i w_i · (R_i − leave-one-out mean) ─► loss = −Σ A · Σ_t log π(a_t|s_t) / #tokens
                    ─► Adam on routers.{module}.weight/bias row k (every other row gets zero gradient)

Training starts from the constant router of the anchor (zero weights, bias = log of the static mix),
i.e. from static activation mixing, and may only improve on it per token.
The state (router tensors, Adam moments, w) is saved as safetensors + JSON every `save_every` steps.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .. import names
from ..config import atomic_write_text
from ..model import HoEModel
from ..objectives import Objective, score_all
from .config import RouterConfig
from .data import ChatCodec
from .lm import answer_logprobs
from .sampling import sample
from .state import RunState
from .tchebycheff import omd_update, scalarised_advantages, tchebycheff

log = logging.getLogger(__name__)


def router_params(model: HoEModel) -> dict[str, torch.nn.Parameter]:
    """Router weights and biases (the mask stays fixed), keyed by canonical name."""
    return {k.replace("__", "."): p for k, p in model.routers.items() if k.replace("__", ".") != names.ROUTER_MASK}


def make_optimizer(params: dict[str, torch.nn.Parameter], cfg: RouterConfig) -> torch.optim.Adam:
    weights = [p for n, p in params.items() if n.endswith(".weight")]
    biases = [p for n, p in params.items() if n.endswith(".bias")]
    return torch.optim.Adam([{"params": weights, "lr": cfg.lr_weight}, {"params": biases, "lr": cfg.lr_bias}])


def only_row(params: dict[str, torch.nn.Parameter], k: int) -> list:
    """Gradients flow only into router row k (the anchor being trained). -> hook handles to remove."""
    handles = []
    for p in params.values():
        p.requires_grad_(True)
        keep = torch.zeros(p.shape[0], *([1] * (p.dim() - 1)))
        keep[k] = 1.0
        handles.append(p.register_hook(lambda g, keep=keep: g * keep))
    return handles


def save_router_state(folder: Path, params, opt, step: int, w: np.ndarray) -> None:
    """Resumable state: tensors and Adam moments as safetensors, counters as JSON (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous() for n, p in params.items()}
    for n, p in params.items():
        st = opt.state.get(p, {})
        if st:
            tensors[f"adam.{n}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"adam.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    adam_steps = {n: float(opt.state[p]["step"]) for n, p in params.items() if opt.state.get(p)}
    tmp = folder / "state.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(folder / "state.safetensors")
    atomic_write_text(folder / "state.json", json.dumps({"step": step, "w": w.tolist(), "adam_steps": adam_steps}))


def load_router_state(folder: Path, params, opt) -> tuple[int, np.ndarray] | None:
    if not (folder / "state.json").is_file():
        return None
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])
            if n in meta["adam_steps"]:
                opt.state[p] = {"step": torch.tensor(meta["adam_steps"][n]),
                                "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                                "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone()}
    return int(meta["step"]), np.asarray(meta["w"], float)


def train_anchor(model: HoEModel, codec: ChatCodec, prompts: list[str], objectives: list[Objective], k: int,
                 z_star, cfg: RouterConfig, seed: int, run: RunState, stage: str) -> None:
    """Policy-gradient training of router row `k` (anchor λ = model.config.anchors[k])."""
    lam = np.asarray(model.config.anchors[k], float)
    params = router_params(model)
    handles = only_row(params, k)
    opt = make_optimizer(params, cfg)
    folder = run.work / stage
    resumed = load_router_state(folder, params, opt)
    start, w = resumed if resumed else (0, lam.copy())
    run.drop_records(stage, start)
    mix = torch.zeros(1, model.config.n_routers)
    mix[0, k] = 1.0
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    with tqdm(total=cfg.steps, initial=start, desc=f"routers {stage}", unit="step") as bar:
        for step in range(start, cfg.steps):
            idx = [order[(step * cfg.prompts_per_step + j) % len(order)] for j in range(cfg.prompts_per_step)]
            batch = [prompts[i] for i in idx]
            w, record = pg_step(model, codec, batch, objectives, mix, lam, w, z_star, opt, params, cfg,
                                seed * 1_000_003 + step)
            run.log({"stage": stage, "step": step, **record})
            bar.set_postfix(tch=f"{record['tchebycheff']:.3f}")
            bar.update()
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                save_router_state(folder, params, opt, step + 1, w)
    for p, h in zip(params.values(), handles):
        p.requires_grad_(False)
        h.remove()


def pg_step(model, codec, batch, objectives, mix, lam, w, z_star, opt, params, cfg: RouterConfig, seed: int):
    """One REINFORCE-LOO step with Tchebycheff/OMD weights. -> (new w, log record)"""
    prompt_ids = [codec.prompt_ids(p) for p in batch]
    got = sample(model, prompt_ids, cfg.group_size, cfg.max_new_tokens, codec.eos_id, codec.pad_id,
                 cfg.temperature, cfg.top_p, seed=seed, router_mix=mix)
    texts = [codec.decode(t) for t in got.tokens]
    rewards = score_all(objectives, [p for p in batch for _ in range(cfg.group_size)], texts)  # [P·k, m]
    grouped = rewards.reshape(len(batch), cfg.group_size, -1)
    mean_r = rewards.mean(0)
    w = omd_update(w, lam, mean_r, z_star, cfg.omd_eta)
    adv = torch.tensor(scalarised_advantages(grouped, w).reshape(-1), dtype=torch.float32)  # [P·k]
    answers = [t + ([codec.eos_id] if f else []) or [codec.eos_id] for t, f in zip(got.tokens, got.finished)]
    logp, mask = answer_logprobs(model, [p for p in prompt_ids for _ in range(cfg.group_size)], answers,
                                 codec.pad_id, router_mix=mix)
    loss = -(adv[:, None] * logp).sum() / mask.sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
    opt.step()
    record = {"rewards": mean_r.round(6).tolist(), "w": w.round(6).tolist(), "loss": round(float(loss.detach()), 6),
              "tchebycheff": tchebycheff(lam, mean_r, z_star), "grad_norm": round(float(grad_norm), 6),
              "answer_tokens": int(mask.sum())}
    return w, record
