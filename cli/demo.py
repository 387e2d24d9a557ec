"""`hoe demo` (what `make demo` runs): the embedded SmolLM2-HoE, one prompt, three contrasting preferences.

    prepare the base (cached) ─► export base + models/smollm2-hoe (cached by content hash)
      ─► torch-free runtime: generate at each preference, score the answers with the objectives
      ─► decode speed: our runtime vs the PyTorch reference, same prompt, same greedy tokens

The export uses `hoe.export.export_hoe(base_dir, ckpt_dir, out_dir, demo_export_options())` (or the `exporter`
given): experts baked into the base projections, with hoe's Mixture and Attention kernels where this install has
them, the fastest fp32 graph on CPU (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from hoe.core.atomic import staged_folder
from hoe.core.config import JsonConfig
from hoe.core.errors import HoEError

log = logging.getLogger(__name__)

DEMO_PROMPT = "I am nervous about learning to draw. Any advice?"  # a held-out prompt


@dataclass
class DemoConfig(JsonConfig):
    prompt: str = DEMO_PROMPT
    preferences: list[list[float]] = field(default_factory=lambda: [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0],
                                                                    [0.0, 0.0, 1.0]])
    max_new_tokens: int = 40  # the length the experts and routers were trained with
    checkpoint: str = ""  # "" -> models/smollm2-hoe
    base: str = ""  # "" -> SmolLM2-135M-Instruct (prepare_base)
    export_root: str = ""  # "" -> $HOE_CACHE/exports
    threads: int = 1
    speed_tokens: int = 32  # greedy tokens timed on each engine


def content_key(*folders_and_files: Path) -> str:
    """sha256 over the bytes of the given files (folders: their files, sorted by name)."""
    h = hashlib.sha256()
    for p in folders_and_files:
        files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
    return h.hexdigest()


def demo_export_options() -> dict:
    """The demo's ExportConfig fields: fp32, experts and routers baked in (lora_B on an int8 grid; validated
    against a reference with the same weights), and where the kernels library was built their mixtures as hoe's
    Mixture op (hoe/base 1.03 against 1.40 unbaked) and the attention as its Attention op (docs/BENCHMARKS.md).
    Part of the export's cache key."""
    from hoe.runtime import kernels

    built = kernels.library() is not None
    return {"bake_experts": True, "mixture_kernel": built, "attention_kernel": built}


def default_exporter(base_dir: Path, ckpt_dir: Path, out_dir: Path) -> Path:
    try:
        from hoe.export import export_hoe
        from hoe.export.onnx_export import ExportConfig
    except ImportError as e:
        raise HoEError("the exporter hoe.export.export_hoe(base_dir, ckpt_dir, out_dir) is not available in this "
                       "checkout; `hoe demo` needs it to build the ONNX folder") from e
    export_hoe(base_dir, ckpt_dir, out_dir, ExportConfig(**demo_export_options()))
    return out_dir


def _readable(folder: Path) -> bool:
    """Whether the exported folder was made by the current exporter (contract.manifest.is_current); an older
    exporter's folder is redone."""
    from hoe.contract.manifest import is_current, read_manifest

    try:
        return is_current(read_manifest(folder))
    except (HoEError, AttributeError):
        return False


def cached_export(base_dir: Path, ckpt_dir: Path, root: Path, exporter=None) -> Path:
    """The exported folder for (base, checkpoint), built once: keyed by the checkpoint's content, the base's
    preparation stamp (or config) and the demo's export options, written to a temporary folder and renamed
    when whole."""
    ckpt_files = [ckpt_dir / n for n in ("hoe.json", "experts.safetensors", "routers.safetensors")]
    stamp = base_dir / "hoe_prepared.json"
    content = content_key(*ckpt_files, stamp if stamp.is_file() else base_dir / "config.json")
    key = hashlib.sha256((content + json.dumps(demo_export_options(), sort_keys=True)).encode()).hexdigest()[:16]
    folder = root / f"{ckpt_dir.name}-{key}"
    if (folder / "hoe_config.json").is_file():
        if _readable(folder):
            return folder
        log.info("re-exporting %s: it was made by an older exporter", folder)
    root.mkdir(parents=True, exist_ok=True)
    log.info("exporting %s + %s to %s (once)", base_dir, ckpt_dir, folder)
    with staged_folder(folder, replace=True, create=False) as tmp:  # the exporter creates it
        (exporter or default_exporter)(base_dir, ckpt_dir, tmp)
    return folder


def resolve(cfg: DemoConfig) -> tuple[Path, Path, Path]:
    from hoe.core.smollm2 import cache_dir, prepare_base
    from hoe.train.recipe import default_out

    base = Path(cfg.base) if cfg.base else prepare_base()
    ckpt = Path(cfg.checkpoint) if cfg.checkpoint else default_out()
    root = Path(cfg.export_root) if cfg.export_root else cache_dir() / "exports"
    return base, ckpt, root


def torch_decode_ms(base_dir: Path, ckpt_dir: Path, prompt_ids: list[int], preference, tokens: int,
                    threads: int, repeats: int = 2, quant: dict | None = None) -> tuple[float, list[int]]:
    """PyTorch reference: ms per decode step (prefill excluded), batch 1, greedy, no EOS stop. `quant` (the
    export's manifest `quantization`) gives it the weights the graph computes with (baked lora_B's grid)."""
    import numpy as np
    import torch
    from hoe.core.generate import generate
    from hoe.core.loading import load_hoe
    from hoe.core.preference import PreferenceRouter
    from hoe.export.quantize import dequantize_reference

    torch.set_num_threads(threads)
    model = load_hoe(base_dir, ckpt_dir)
    dequantize_reference(model, quant)
    cfg = model.config
    mix = torch.from_numpy(PreferenceRouter(cfg.objectives, cfg.anchors, cfg.n_route).route(preference, 1)[1])  # [1, K]
    ids = torch.tensor([prompt_ids])
    mask = torch.ones_like(ids)
    generate(model, ids, mask, mix, 2)  # warm-up
    times = {1: [], tokens: []}
    for _ in range(repeats):
        for n in (1, tokens):
            t0 = time.perf_counter()
            out = generate(model, ids, mask, mix, n)
            times[n].append(time.perf_counter() - t0)
    ms = 1000 * (min(times[tokens]) - min(times[1])) / (tokens - 1)
    return ms, np.asarray(out[0]).tolist()


def run_demo(cfg: DemoConfig, exporter=None, echo=print) -> dict:
    """Print the demo and return what it printed as data."""
    import hoe.runtime as hr
    from hoe.core.objectives import make_objectives, score_all

    t_start = time.perf_counter()
    base_dir, ckpt_dir, root = resolve(cfg)
    folder = cached_export(base_dir, ckpt_dir, root, exporter)
    model = hr.load(folder, threads=cfg.threads)
    objectives = make_objectives(model.objectives)
    echo(f"model: {ckpt_dir.name} on {base_dir.name}; objectives: {', '.join(model.objectives)}")
    echo(f"prompt: {cfg.prompt}\n")
    answers = []
    gen_cfg = hr.GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    for pref in cfg.preferences:
        [r] = model.generate(cfg.prompt, preference=pref, config=gen_cfg, chat=True)
        scores = score_all(objectives, [cfg.prompt], [r.text])[0]
        answers.append({"preference": pref, "text": r.text, "scores": dict(zip(model.objectives, scores.tolist()))})
        echo(f"preference {_vec(pref)}  " + "  ".join(f"{k}={v:.2f}" for k, v in answers[-1]["scores"].items()))
        echo(f"  {r.text}\n")
    speed = measure_speed(model, cfg, base_dir, ckpt_dir)
    echo(f"decode speed (batch 1, {cfg.speed_tokens} greedy tokens, {cfg.threads} thread(s)): "
         f"runtime {speed['runtime_ms_per_token']:.1f} ms/token, PyTorch {speed['torch_ms_per_token']:.1f} ms/token "
         f"({speed['speedup']:.2f}x faster; same greedy tokens: {speed['same_tokens']})")
    total = time.perf_counter() - t_start
    echo(f"demo took {total:.0f} s (export cached in {folder})")
    return {"answers": answers, "speed": speed, "export": str(folder), "seconds": total}


def measure_speed(model, cfg: DemoConfig, base_dir: Path, ckpt_dir: Path, repeats: int = 2) -> dict:
    """Runtime vs PyTorch (with the export's weights) on the same prompt and preference (uniform), same number
    of greedy tokens (EOS ignored), batch 1; best of `repeats` runs each. A progress bar on stderr while it runs."""
    import hoe.runtime as hr
    from tqdm import tqdm

    pref = [1.0 / len(model.objectives)] * len(model.objectives)
    prompt_ids = model.encode(cfg.prompt, chat=True)
    timed = hr.GenerationConfig(max_new_tokens=cfg.speed_tokens, temperature=0.0, ignore_eos=True)
    with tqdm(total=2, desc="decode speed", unit="engine") as bar:
        bar.set_postfix_str("runtime")
        model.generate(prompt_ids, preference=pref, config=hr.GenerationConfig(max_new_tokens=2))  # warm-up
        runs = [model.generate(prompt_ids, preference=pref, config=timed)[0] for _ in range(repeats)]
        rt_ms = min(float(r.timings["decode_ms_per_token"]) for r in runs)
        bar.update()
        bar.set_postfix_str("PyTorch")
        torch_ms, torch_ids = torch_decode_ms(base_dir, ckpt_dir, prompt_ids, pref, cfg.speed_tokens, cfg.threads,
                                              repeats, model.manifest.data.get("quantization"))
        bar.update()
    return {"runtime_ms_per_token": rt_ms, "torch_ms_per_token": torch_ms, "speedup": torch_ms / rt_ms,
            "same_tokens": runs[0].token_ids == torch_ids[:len(runs[0].token_ids)]}


def _vec(v) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in v) + "]"
