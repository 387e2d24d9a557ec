"""`hoe bench pareto` (torch-free registration; the evaluation lives in pareto_eval.py)."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from hoe.core.atomic import atomic_write_text
from hoe.core.config import JsonConfig

log = logging.getLogger(__name__)


@dataclass
class ParetoConfig(JsonConfig):
    """What `hoe bench pareto` evaluates and how."""

    checkpoint: str = ""  # HoE checkpoint folder; "" -> models/smollm2-hoe
    base: str = ""  # base HF folder; "" -> SmolLM2-135M-Instruct (prepare_base)
    prompts: str = ""  # JSONL; "" -> data/prompts/heldout.jsonl
    n_prompts: int = 0  # held-out prompts (the first n); 0 -> all (144 in data/prompts/heldout.jsonl)
    grid_steps: int = 4  # simplex grid step 1/grid_steps (3 objectives: 4 -> 15 preferences)
    max_new_tokens: int = 32  # greedy, fixed for every system (what the committed pareto.json used)
    batch_rows: int = 128  # rows decoded together (HoE / static / base)
    mod_chunk: int = 8  # prompts per MOD block (each prefilled once per expert, shared by every preference)
    threads: int = 1
    reference_point: list[float] = field(default_factory=list)  # hypervolume reference; [] -> zeros
    work: str = ""  # folder keeping decoded batches so an interrupted run resumes; "" -> none
    bootstrap: int = 1000  # resamples of the prompt bootstrap (pareto_stats.py)
    seed: int = 0  # seed of the bootstrap draws
    export: str = ""  # exported folder: its base weight precision (hoe_config.json `quantization`) and KV cache

    def resolve(self) -> tuple[Path, Path, Path]:
        from hoe.train.data import default_prompts
        from hoe.train.recipe import default_out

        if self.base:
            base = Path(self.base)
        else:
            from hoe.core.smollm2 import prepare_base

            base = prepare_base()
        return base, Path(self.checkpoint or default_out()), Path(self.prompts or default_prompts("heldout"))


def run(cfg: ParetoConfig, out: Path | None = None) -> dict:
    """Evaluate, then write pareto.json and pareto.png into `out` (default: the checkpoint folder)."""
    from .pareto_eval import evaluate
    from .pareto_plot import plot_fronts

    result = evaluate(cfg)
    out = Path(out) if out else cfg.resolve()[1]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pareto.json", compact_json(result) + "\n")
    plot_fronts(result, out / "pareto.png")
    refresh_card(out)
    return result


_NUMBER_LIST = re.compile(r"\[[-+0-9.eE,\s]*\]")


def compact_json(data: dict) -> str:
    """Indented JSON whose lists of numbers sit on one line each (per-prompt rewards stay readable)."""
    return _NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), json.dumps(data, indent=1))


def refresh_card(out: Path) -> None:
    """Rewrite MODEL_CARD.md of a checkpoint trained by `hoe train` so that it shows the new Pareto results."""
    if not (out / "training.json").is_file():
        return
    from hoe.train.card import write_card
    from hoe.train.config import RecipeConfig

    summary = json.loads((out / "training.json").read_text())
    write_card(out, RecipeConfig.from_dict(summary["recipe"]), summary)


def summary_lines(result: dict) -> list[str]:
    objs = result["objectives"]
    lines = [f"{'system':<18} {'hypervolume':>11} {'ci95':>17}   mean rewards over the grid ({', '.join(objs)})"]
    for name, sys in result["systems"].items():
        mean = [sum(p["rewards"][i] for p in sys["points"]) / len(sys["points"]) for i in range(len(objs))]
        lo, hi = sys["hypervolume_ci95"]
        lines.append(f"{name:<18} {sys['hypervolume']:>11.4f} [{lo:.4f}, {hi:.4f}]   "
                     + "  ".join(f"{v:.3f}" for v in mean))
    for key, c in result["comparisons"].items():
        lines.append(f"{key:<18} {c['hv_diff']:>+11.4f} [{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]")
    lines.append(f"grid_wins_vs_static {result['grid_wins_vs_static']:.3f} "
                 f"(non-vertex preferences: {result['grid_wins_vs_static_non_vertex']:.3f})")
    return lines


# CLI flag -> ParetoConfig field; a new option is one add_argument line plus one entry here.
CLI_FIELDS = ("checkpoint", "base", "prompts", "n_prompts", "grid_steps", "max_new_tokens", "batch_rows", "threads",
              "work", "bootstrap", "seed", "export")


def register(sub) -> None:
    p = sub.add_parser("pareto", help="Pareto fronts of HoE vs static mixing, MOD, single experts and the base",
                       description="Score HoE, static mixing (constant routers), MOD-style logit mixing, each expert "
                                   "alone and the base on held-out prompts over a preference grid (greedy); report "
                                   "mean rewards, hypervolumes with bootstrap intervals over prompts, HoE's "
                                   "differences to static and MOD, and a plot. Writes pareto.json and pareto.png.")
    d = ParetoConfig()
    p.add_argument("--checkpoint", help="HoE checkpoint folder (default: models/smollm2-hoe)")
    p.add_argument("--base", help="base model folder (default: SmolLM2-135M-Instruct)")
    p.add_argument("--prompts", help="held-out prompts JSONL (default: data/prompts/heldout.jsonl)")
    p.add_argument("--n-prompts", type=int, help="first N held-out prompts (default: all)")
    p.add_argument("--grid-steps", type=int, help=f"simplex grid step 1/N (default {d.grid_steps}: 15 points)")
    p.add_argument("--max-new-tokens", type=int, help=f"greedy tokens per answer (default {d.max_new_tokens})")
    p.add_argument("--batch-rows", type=int, help=f"rows decoded together (default {d.batch_rows})")
    p.add_argument("--threads", type=int, help=f"torch threads (default {d.threads})")
    p.add_argument("--bootstrap", type=int, help=f"bootstrap resamples over prompts (default {d.bootstrap})")
    p.add_argument("--seed", type=int, help=f"bootstrap seed (default {d.seed})")
    p.add_argument("--out", help="folder for pareto.json/png (default: the checkpoint folder)")
    p.add_argument("--work", help="resume folder for decoded batches (default: $HOE_CACHE/bench/pareto)")
    p.add_argument("--export", help="exported folder (e.g. hoe export --weights int4): evaluate with its "
                                    "dequantized base weights, the weights its graph computes with, and through "
                                    "an int8 KV cache when it has one (--kv-cache int8)")
    p.set_defaults(func=_main)


def _default_work() -> str:
    from hoe.core.smollm2 import cache_dir

    return str(cache_dir() / "bench" / "pareto")


def config_from_args(args) -> ParetoConfig:
    """The flags given (None = not given) over ParetoConfig's defaults."""
    given = {f: getattr(args, f) for f in CLI_FIELDS if getattr(args, f, None) is not None}
    cfg = ParetoConfig(**given)
    cfg.work = cfg.work or _default_work()
    return cfg


def _main(args) -> int:
    result = run(config_from_args(args), Path(args.out) if args.out else None)
    print("\n".join(summary_lines(result)))
    return 0
