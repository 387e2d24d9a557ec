"""Level-2 router experts: train the routers of every interior anchor at once; base and LoRA experts stay frozen.

    for each step:  P prompts × A anchors × k answers, one batch, row (a, p, j) routed by anchor a only
                    (router_mix = e_a), sampled by the rollout backend (rollout.py: our onnxruntime runtime
                    fed the current router tensors, or the PyTorch reference)
                    ─► rewards R [A, P, k, m] ─► per anchor a: OMD weights w_a (Tchebycheff, tchebycheff.py)
                    ─► A = Σ_i w_a,i · (R_i − leave-one-out mean) / std_batch(R_i)
                    ─► loss = −Σ_rows A · Σ_t log π(a_t|s_t) / #answer tokens   (teacher-forced, PyTorch;
                       each prompt computed once for its k answers)
                    ─► Adam on routers.{module}.weight/bias rows of the trained anchors (vertex rows: no gradient)

Training starts from the trainable router of each anchor (zero weights, bias = log of the static mix), i.e.
from static activation mixing, and may only improve on it per token. No KL or entropy term: the estimator is
on-policy (fresh samples every step, no importance ratio that a trust region would have to guard), and the
router policy can only move within mixtures of the frozen experts' gates, whose drift the Adam learning rate
and the gradient clip bound (see docs/TRAINING.md).

After every step the state (router tensors, Adam moments, step, w per anchor) is written as one safetensors
file (JSON counters in its metadata), atomically: a run killed at any moment resumes at the last finished step.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from hoe.core import names
from hoe.core.model import HoEModel
from hoe.core.objectives import Objective, score_all
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from .config import RouterConfig
from .data import ChatCodec
from .lm import grouped_answer_logprobs
from .state import RunState
from .tchebycheff import omd_update, scalarised_advantages, tchebycheff

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"


def router_params(model: HoEModel) -> dict[str, torch.nn.Parameter]:
    """Router weights and biases (the mask stays fixed), keyed by canonical name."""
    return {k.replace("__", "."): p for k, p in model.routers.items() if k.replace("__", ".") != names.ROUTER_MASK}


def make_optimizer(params: dict[str, torch.nn.Parameter], cfg: RouterConfig) -> torch.optim.Adam:
    weights = [p for n, p in params.items() if n.endswith(".weight")]
    biases = [p for n, p in params.items() if n.endswith(".bias")]
    return torch.optim.Adam([{"params": weights, "lr": cfg.lr_weight}, {"params": biases, "lr": cfg.lr_bias}])


def only_rows(params: dict[str, torch.nn.Parameter], rows: list[int]) -> list:
    """Gradients flow only into router rows `rows` (the anchors being trained). -> hook handles to remove."""
    handles = []
    for p in params.values():
        p.requires_grad_(True)
        keep = torch.zeros(p.shape[0], *([1] * (p.dim() - 1)))
        keep[rows] = 1.0
        handles.append(p.register_hook(lambda g, keep=keep: g * keep))
    return handles


def save_router_state(folder: Path, params, opt, step: int, w: np.ndarray) -> None:
    """Resumable state in ONE file, replaced atomically: tensors and Adam moments as safetensors, counters
    (step, OMD weights w [A, m], Adam steps) as JSON in its metadata (no pickle)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: p.detach().contiguous() for n, p in params.items()}
    for n, p in params.items():
        st = opt.state.get(p, {})
        if st:
            tensors[f"adam.{n}.exp_avg"] = st["exp_avg"].contiguous()
            tensors[f"adam.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    adam_steps = {n: float(opt.state[p]["step"]) for n, p in params.items() if opt.state.get(p)}
    meta = {"step": step, "w": np.asarray(w).tolist(), "adam_steps": adam_steps}
    tmp = folder / f"{STATE_FILE}.tmp"
    save_file(tensors, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(folder / STATE_FILE)


def load_router_state(folder: Path, params, opt) -> tuple[int, np.ndarray] | None:
    """Restore what save_router_state wrote -> (step, w [A, m]), or None when there is no state yet."""
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[n])
            if n in meta["adam_steps"]:
                opt.state[p] = {"step": torch.tensor(meta["adam_steps"][n]),
                                "exp_avg": tensors[f"adam.{n}.exp_avg"].clone(),
                                "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"].clone()}
    return int(meta["step"]), np.asarray(meta["w"], float)


def train_anchors(model: HoEModel, codec: ChatCodec, prompts: list[str], objectives: list[Objective], rows: list[int],
                  z_star, cfg: RouterConfig, seed: int, run: RunState, stage: str, rollouts) -> None:
    """Policy-gradient training of router rows `rows` (anchors λ = model.config.anchors[k], k in rows) together."""
    lams = np.asarray([model.config.anchors[k] for k in rows], float)  # [A, m]
    params = router_params(model)
    handles = only_rows(params, rows)
    opt = make_optimizer(params, cfg)
    folder = run.work / stage
    resumed = load_router_state(folder, params, opt)
    start, w = resumed if resumed else (0, lams.copy())
    run.drop_records(stage, start)
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    with tqdm(total=cfg.steps, initial=start, desc=f"routers ({len(rows)} anchors)", unit="step") as bar:
        for step in range(start, cfg.steps):
            idx = [order[(step * cfg.prompts_per_step + j) % len(order)] for j in range(cfg.prompts_per_step)]
            w, record = pg_step(model, codec, [prompts[i] for i in idx], objectives, rows, lams, w, z_star, opt,
                                params, cfg, seed * 1_000_003 + step, rollouts)
            run.log({"stage": stage, "step": step, **record})  # a record past the saved step is dropped on resume
            save_router_state(folder, params, opt, step + 1, w)
            bar.set_postfix(tch=f"{np.mean([a['tchebycheff'] for a in record['anchors']]):.3f}")
            bar.update()
    for p, h in zip(params.values(), handles):
        p.requires_grad_(False)
        h.remove()


def pg_step(model, codec, batch, objectives, rows, lams, w, z_star, opt, params, cfg: RouterConfig, seed: int,
            rollouts):
    """One REINFORCE-LOO step for every trained anchor, Tchebycheff/OMD weights per anchor. -> (new w, record)"""
    n_a, n_p, k = len(rows), len(batch), cfg.group_size
    t0, c0 = time.perf_counter(), time.process_time()
    prompt_ids = [codec.prompt_ids(p) for p in batch]
    mixes = np.zeros((n_a * n_p, model.config.n_routers), np.float32)  # row a·P + p routed by anchor rows[a]
    mixes[np.arange(n_a * n_p), np.repeat(rows, n_p)] = 1.0
    rollouts.set_routers(model.named_tensors())
    got = rollouts.sample(prompt_ids * n_a, mixes, k, cfg.max_new_tokens, codec.eos_id, codec.pad_id,
                          cfg.temperature, cfg.top_p, seed)
    t1, c1 = time.perf_counter(), time.process_time()
    texts = [codec.decode(t) for t in got.tokens]
    rewards = score_all(objectives, [p for _ in rows for p in batch for _ in range(k)], texts)  # [A·P·k, m]
    grouped = rewards.reshape(n_a, n_p, k, -1)
    t2, c2 = time.perf_counter(), time.process_time()
    anchors, adv = [], []
    for a in range(n_a):
        mean_r = grouped[a].reshape(-1, grouped.shape[-1]).mean(0)
        w[a] = omd_update(w[a], lams[a], mean_r, z_star, cfg.omd_eta)
        adv.append(scalarised_advantages(grouped[a], w[a], normalise=cfg.normalise).reshape(-1))
        anchors.append({"anchor": rows[a], "rewards": mean_r.round(6).tolist(), "w": w[a].round(6).tolist(),
                        "tchebycheff": round(tchebycheff(lams[a], mean_r, z_star), 6),
                        "scalarised": round(float(lams[a] @ mean_r), 6)})
    answers = [t + ([codec.eos_id] if f else []) or [codec.eos_id] for t, f in zip(got.tokens, got.finished)]
    loss = accumulate_gradient(model, prompt_ids * n_a, answers, torch.tensor(np.concatenate(adv), dtype=torch.float32),
                               torch.as_tensor(mixes), k, codec.pad_id, cfg.grad_rows, opt)
    grad_norm = torch.nn.utils.clip_grad_norm_(list(params.values()), cfg.grad_clip)
    opt.step()
    t3, c3 = time.perf_counter(), time.process_time()
    tokens = sum(len(a) for a in answers)
    record = {"anchors": anchors, "loss": round(loss, 6), "grad_norm": round(float(grad_norm), 6),
              "answer_tokens": tokens, "rollout": rollouts.name,
              "seconds": {"rollout": round(t1 - t0, 2), "score": round(t2 - t1, 2), "gradient": round(t3 - t2, 2)},
              "cpu_seconds": {"rollout": round(c1 - c0, 2), "score": round(c2 - c1, 2), "gradient": round(c3 - c2, 2)},
              "rollout_tokens_per_s": round(tokens / max(t1 - t0, 1e-9), 2)}
    return w, record


def accumulate_gradient(model, prompts, answers, adv, mix, k: int, pad_id: int, chunk: int, opt) -> float:
    """−Σ_rows adv · Σ_t log π / #tokens, backpropagated in chunks of about `chunk` rows -> the loss.

    prompts [U] with router_mix [U, K]; answers [U·k] (k per prompt, consecutive). Each prompt is computed once for
    its k answers (lm.grouped_answer_logprobs: same log-probs and gradient as per row, tests/train/test_lm.py);
    groups are chunked in order of their longest answer, so a chunk pads little (the sum does not depend on it).
    """
    total = float(sum(len(a) for a in answers))
    per_chunk = max(1, chunk // k)
    order = sorted(range(len(prompts)), key=lambda u: max(len(a) for a in answers[u * k:(u + 1) * k]))
    opt.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for s in range(0, len(order), per_chunk):
        units = order[s:s + per_chunk]
        rows = [u * k + j for u in units for j in range(k)]
        logp, _ = grouped_answer_logprobs(model, [prompts[u] for u in units], [answers[r] for r in rows], k, pad_id,
                                          router_mix=mix[units])
        loss = -(adv[rows, None] * logp).sum() / total
        loss.backward()
        loss_sum += float(loss.detach())
    return loss_sum
