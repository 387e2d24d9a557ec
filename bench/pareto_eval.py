"""`hoe bench pareto`: mean reward per objective over a preference grid, for HoE and the peers' ways of serving
preferences, on held-out prompts (greedy, fixed max new tokens), with the PyTorch reference (hoe.core).

Systems (all from the same checkpoint, base and experts):
  hoe       trained routers, preference routing (HOE_METHOD.md level 3)
  static    constant routers only: gates g = λ (activation-space mixing = PEFT `cat` merge; Rewarded-Soups-like)
  mod       MOD-style decoding: one forward per expert with λ_i > 0, next token = argmax Σ_i λ_i log π_i
  experts   each single-objective expert alone (the grid's vertices)
  base      the base model (one point)
Where HoE's routing gives no weight to a trained anchor, its gates equal static mixing's exactly (vertex
routers are constant), so those points are decoded once and reported for both (marked `same_as_static`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from hoe.contract import kv_int8
from hoe.core import names
from hoe.core.atomic import atomic_write_text
from hoe.core.objectives import make_objectives, score_all
from hoe.core.routing import route, simplex_grid
from tqdm import tqdm

from .hypervolume import pareto_mask
from .pareto_decode import decode, prefill, select
from .pareto_stats import DECIMALS, rounded, uncertainty

log = logging.getLogger(__name__)


def static_tensors(model) -> dict[str, torch.Tensor]:
    """The checkpoint's experts with constant routers at the vertices only: router_mix = λ gives g = λ."""
    from hoe.core.routers import constant_routers, vertex_anchors

    cfg = model.config
    tensors = {k: v for k, v in model.named_tensors().items() if k.startswith(names.EXPERTS_PREFIX)}
    feats = {m: model.model.get_submodule(m).base.in_features for m in cfg.target_modules}
    dtype = next(iter(tensors.values())).dtype
    routers = constant_routers(cfg.target_modules, feats, cfg.expert_prefs, vertex_anchors(cfg.n_objectives),
                               cfg.n_objectives)
    tensors.update({k: (v if k == names.ROUTER_MASK else v.to(dtype)) for k, v in routers.items()})
    return tensors


class AnswerCache:
    """Decoded batches kept in a JSON file, so an interrupted benchmark resumes where it stopped.
    Reset whenever the run's identity (config, checkpoint content, prompts) changes."""

    def __init__(self, path: Path | None, identity: dict) -> None:
        self.path, self.identity, self.data = path, identity, {}
        if path is not None and path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("identity") == identity:
                self.data = saved["batches"]

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.path, json.dumps({"identity": self.identity, "batches": self.data}))


def export_weights(model, plain, quant: dict | None) -> None:
    """Give the HoE model and the plain base (the `base` row) the weights an export's graph computes with, in
    place: quant is its manifest's `quantization` section (None or fp32: unchanged, baked experts aside)."""
    from hoe.export.quantize import dequantize_reference

    dequantize_reference(model, quant)
    if quant:  # the base row has no experts to take from a baked graph
        dequantize_reference(plain, {k: v for k, v in quant.items() if k != "experts"})


class Runner:
    """Greedy decoding of many (prompt, mix) rows in batches, counting wall time per system."""

    def __init__(self, codec, max_new_tokens: int, batch_rows: int, cache: AnswerCache | None = None,
                 int8_cache: bool = False) -> None:
        self.codec, self.max_new, self.batch_rows = codec, max_new_tokens, batch_rows
        self.int8_cache = int8_cache  # decode through an int8 KV cache (pareto_decode.py)
        self.cache = cache or AnswerCache(None, {})
        self.seconds: dict[str, float] = {}

    def single(self, system: str, model, prompts: list[list[int]], mixes=None, tensors=None,
               tag: str = "") -> list[str]:
        """One stream per row; mixes [R, K] for a HoE model; `tag` names the weights in the cache keys."""
        t0, texts = time.perf_counter(), []
        for s in tqdm(range(0, len(prompts), self.batch_rows), desc=f"pareto {system}", unit="batch"):
            key = f"{system}:{tag}:{s}"
            if self.cache.get(key) is None:
                chunk = prompts[s:s + self.batch_rows]
                mix = None if mixes is None else mixes[s:s + self.batch_rows]
                pre = prefill(model, chunk, self.codec.pad_id, router_mix=mix, tensors=tensors,
                              int8_cache=self.int8_cache)
                n = len(chunk)
                answers = decode(model, pre, torch.arange(n), torch.ones(n), n, self.max_new, self.codec.eos_id,
                                 tensors=tensors, int8_cache=self.int8_cache)
                self.cache.put(key, [self.codec.decode(a) for a in answers])
            texts += self.cache.get(key)
        self.seconds[system] = self.seconds.get(system, 0.0) + time.perf_counter() - t0
        return texts

    def mod(self, model, prompts: list[list[int]], points: list[list[float]], tensors, chunk: int,
            tag: str = "") -> list[list[str]]:
        """MOD answers [point][prompt]: each (prompt, expert) prefilled once and shared by every point."""
        m = len(points[0])
        t0 = time.perf_counter()
        texts = [[None] * len(prompts) for _ in points]
        for s in tqdm(range(0, len(prompts), chunk), desc="pareto mod", unit="batch"):
            block = prompts[s:s + chunk]
            cached = self.cache.get(f"mod:{tag}:{s}")
            if cached is not None:
                for pi in range(len(points)):
                    texts[pi][s:s + len(block)] = cached[pi]
                continue
            streams = [p for p in block for _ in range(m)]
            mix = torch.eye(m).repeat(len(block), 1)  # stream j*m+e -> expert e alone
            pre = prefill(model, streams, self.codec.pad_id, router_mix=mix, tensors=tensors,
                          int8_cache=self.int8_cache)
            index, row_of, weight = [], [], []
            for pi, lam in enumerate(points):
                for j in range(len(block)):
                    for e in range(m):
                        if lam[e] > 0:
                            index.append(j * m + e)
                            row_of.append(pi * len(block) + j)
                            weight.append(lam[e])
            answers = decode(model, select(pre, torch.tensor(index)), torch.tensor(row_of), torch.tensor(weight),
                             len(points) * len(block), self.max_new, self.codec.eos_id, tensors=tensors,
                             int8_cache=self.int8_cache)
            for pi in range(len(points)):
                for j in range(len(block)):
                    texts[pi][s + j] = self.codec.decode(answers[pi * len(block) + j])
            self.cache.put(f"mod:{tag}:{s}", [texts[pi][s:s + len(block)] for pi in range(len(points))])
        self.seconds["mod"] = time.perf_counter() - t0
        return texts


def tensors_key(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of tensors by name and value (what a cached answer depends on, whatever folder holds them)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def trained_weight(mix: np.ndarray, n_objectives: int) -> float:
    """Routing weight on non-vertex anchors (anchors are stored vertices first)."""
    return float(mix[n_objectives:].sum())


def evaluate(cfg) -> dict:
    """Run the benchmark described by a ParetoConfig; returns the JSON-able report."""
    from hoe.core.checkpoint import HoECheckpoint
    from hoe.core.loading import hoe_from_checkpoint, load_base
    from hoe.train.data import ChatCodec, load_prompts

    torch.set_num_threads(cfg.threads)
    base_dir, ckpt_dir, prompt_file = cfg.resolve()
    ckpt = HoECheckpoint.load(ckpt_dir)
    plain = load_base(base_dir)
    ckpt.validate(plain)
    model = hoe_from_checkpoint(load_base(base_dir), ckpt)
    manifest = {}
    if cfg.export:  # the export's quantized weights, dequantized (export/quantize.py), and its KV cache
        from hoe.contract.manifest import load_manifest

        manifest = load_manifest(cfg.export)
        export_weights(model, plain, manifest.get("quantization"))
    int8_cache = kv_int8.in_manifest(manifest)
    hc = model.config
    codec = ChatCodec.from_folder(base_dir)
    objectives = make_objectives(hc.objectives)
    prompts = load_prompts(prompt_file, cfg.n_prompts)
    ids = [codec.prompt_ids(p) for p in prompts]
    m, n = hc.n_objectives, len(prompts)
    grid = simplex_grid(m, cfg.grid_steps)
    # Cache keys carry the hash of the weights each system runs on, so static/MOD/expert answers computed
    # with the same experts (e.g. before the routers were trained) are reused.
    decoding = {k: v for k, v in _public(cfg).items() if k not in ("checkpoint", "bootstrap", "seed")}
    # what the export's folder held, not only its path: a re-export to the same folder must not reuse answers
    export = {k: manifest.get(k) for k in ("quantization", "kv_cache")}
    identity = {"config": decoding, "prompts": prompts, "export": export}
    work = Path(cfg.work) if cfg.work else None
    runner = Runner(codec, cfg.max_new_tokens, cfg.batch_rows, AnswerCache(work and work / "answers.json", identity),
                    int8_cache)
    static = static_tensors(model)
    answers: dict[str, list[list[str]]] = {}

    def rows_for(points, mixes):
        return [i for _ in points for i in ids], torch.tensor(np.repeat(np.asarray(mixes), n, axis=0),
                                                               dtype=torch.float32)

    answers["base"] = [runner.single("base", plain, ids)]
    p_ids, p_mix = rows_for(grid, [route(p, np.eye(m)) for p in grid])
    static_tag, hoe_tag = tensors_key(static), tensors_key(model.named_tensors())
    flat = runner.single("static", model, p_ids, p_mix, tensors=static, tag=static_tag)
    answers["static"] = [flat[i * n:(i + 1) * n] for i in range(len(grid))]
    # the systems that depend only on the experts first (cached across router checkpoints), HoE last
    vertices = [i for i, p in enumerate(grid) if max(p) == 1.0]
    mixed = [i for i in range(len(grid)) if i not in vertices]
    answers["mod"] = list(answers["static"])  # at a vertex MOD is the expert alone
    for i, texts in zip(mixed, runner.mod(model, ids, [grid[i] for i in mixed], static, cfg.mod_chunk, static_tag)):
        answers["mod"][i] = texts
    hoe_mix = [route(p, hc.anchors, hc.n_route) for p in grid]
    own = [i for i, mx in enumerate(hoe_mix) if trained_weight(mx, m) > 1e-9]
    answers["hoe"] = list(answers["static"])
    if own:
        p_ids, p_mix = rows_for(own, [hoe_mix[i] for i in own])
        flat = runner.single("hoe", model, p_ids, p_mix, tag=hoe_tag)
        for k, i in enumerate(own):
            answers["hoe"][i] = flat[k * n:(k + 1) * n]

    per_prompt = {name: rounded([score_all(objectives, prompts, t) for t in rows]) for name, rows in answers.items()}
    return report(cfg, hc, grid, per_prompt, answers, prompts, own, vertices, runner.seconds,
                  kv_int8.DTYPE if int8_cache else "float")


def _system(points, per_prompt: np.ndarray, stats: dict, name: str, notes=None, note="") -> dict:
    """One system's entry: mean rewards per point with their intervals, hypervolume, per-prompt rewards."""
    means = per_prompt.mean(axis=1)  # [G, m]
    out = {"points": [], "hypervolume": stats["hypervolume"][name], "hypervolume_ci95": stats["hypervolume_ci95"][name],
           "note": note}
    front = pareto_mask(means)
    for i, (p, r) in enumerate(zip(points, means)):
        row = {"preference": p, "rewards": r.round(DECIMALS).tolist(), "rewards_ci95": stats["rewards_ci95"][name][i],
               "on_front": bool(front[i])}
        if notes:
            row.update(notes[i])
        out["points"].append(row)
    out["per_prompt_rewards"] = per_prompt.tolist()  # [G][n][m]
    return out


def report(cfg, hc, grid, per_prompt, answers, prompts, own, vertices, seconds, kv_cache: str = "float") -> dict:
    """per_prompt: {"hoe" | "static" | "mod": [G, n, m], "base": [1, n, m]} at the stored precision; kv_cache:
    what the answers were decoded through ("float", or "int8" for an int8-cache export)."""
    ref = list(cfg.reference_point or [0.0] * hc.n_objectives)
    rows = {"hoe": (grid, per_prompt["hoe"]), "static": (grid, per_prompt["static"]),
            "mod": (grid, per_prompt["mod"]), "experts": ([grid[i] for i in vertices], per_prompt["static"][vertices]),
            "base": ([None], per_prompt["base"])}
    for i, name in zip(vertices, hc.objectives):
        rows[f"expert:{name}"] = ([grid[i]], per_prompt["static"][[i]])
    stats = uncertainty(grid, {k: v[1] for k, v in rows.items()}, ref, cfg.bootstrap, cfg.seed)
    same = [{"same_as_static": i not in own} for i in range(len(grid))]
    notes = {"hoe": ("trained routers + preference routing", same),
             "static": ("constant routers, g = λ (Rewarded-Soups-like)", None),
             "mod": ("log-prob mixing of the single-expert models, one forward per expert", None),
             "experts": ("the single-objective experts alone (vertices)", None),
             "base": ("the base model without experts", None)}
    systems = {}
    for name, (points, pp) in rows.items():
        note, point_notes = notes.get(name, ("one expert alone", None))
        systems[name] = _system(points, pp, stats, name, point_notes, note)
    example = {name: {str(grid[i] if name != "base" else "base"): texts[i][0]
                      for i in range(len(texts))} for name, texts in answers.items()}
    return {"objectives": hc.objectives, "n_prompts": len(prompts), "max_new_tokens": cfg.max_new_tokens,
            "decoding": "greedy", "kv_cache": kv_cache, "grid": grid, "reference_point": ref, "anchors": hc.anchors,
            "mod_mixing": "next token = argmax_a Σ_i λ_i log π_i(a|s) over experts with λ_i > 0",
            "bootstrap": {"resamples": cfg.bootstrap, "seed": cfg.seed, "unit": "prompt (paired across systems)",
                          "interval": "95% percentile"},
            "comparisons": stats["comparisons"], "grid_wins_vs_static": stats.get("grid_wins_vs_static"),
            "grid_wins_vs_static_non_vertex": stats.get("grid_wins_vs_static_non_vertex"),
            "systems": systems, "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "example_prompt": prompts[0], "example_answers": example, "config": _public(cfg)}


def _public(cfg) -> dict:
    """The config fields that decide the results (not where the resume cache lives, nor threads)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("work", "threads")}
