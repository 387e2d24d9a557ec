"""`hoe bench latency`: our runtime against PyTorch eager and the peers' ways of serving preferences.

    systems   hoe-ort, torch, base-ort, mod, merged (systems.py), ortgenai (ortgenai.py: onnxruntime-genai's
              build of the base at the export's weight precision), torch-compile (torch_compile.py: the
              reference's decoder blocks under torch.compile with a static KV cache; compile time reported apart), all
              loaded in this one process; base-ort is exported at the HoE export's weight precision
    cases     batch {1, 4} × prompt {32, 256} tokens, 64 new tokens, greedy, one interior preference
    timing    repetition r runs every case in turn and, within it, every system once, starting with system r
              (round-robin), so a noisy machine hits all systems and cases alike; decode ms/token = median /
              p90 over every decode step of every repetition; TTFT = median over repetitions of prefill
              forward + first token choice
    threads   ORT intra-op = torch = `threads`, ORT inter-op 1, ORT spin-waiting off
    memory    per system: RSS retained by loading it + peak RSS growth while it generates (Linux VmHWM)
    switch    hoe: preference -> router_mix on the host (route()); merged: re-merge every module in numpy
              + a new ORT session with the merged initializers
    floor     weight bytes read per decode token / measured read bandwidth (floor.py says why not the copy
              bandwidth, which is reported beside it), per system: each counts its own graph's bytes, so int4
              systems get int4 floors; both bandwidths are measured before and after the timing, best kept
    long      batch 1 with a `long_context`-token prompt (decode past 1024), a case of every repetition:
              ratios.long_over_short is decode(past long) / decode(past 32) of hoe-ort (per system in
              `long_over_short_by_system`); paired_ratios.long_over_short the median of the per-repetition
              ratios (`paired_long_over_short_by_system`); ratios.long_over_short_steady the same decode
              steps with the two contexts' steps alternating after both prefills (no prefill's aftermath on one
              side only: `steady_long_over_short_by_system`)
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError

log = logging.getLogger(__name__)

SYSTEMS = ("hoe-ort", "torch", "base-ort", "mod", "merged", "ortgenai", "torch-compile")
# ortgenai (needs the bench extra and a builder run) and torch-compile (minutes of compile on a 2-core machine)
# are opt-in: --systems
DEFAULT_SYSTEMS = ("hoe-ort", "torch", "base-ort", "mod", "merged")
# Targets of the issue, on SmolLM2-135M with 3 experts, batch 1, 1 thread.
TARGETS = {"torch_over_hoe": (">=", 3.0), "hoe_over_base": ("<=", 1.15), "mod_over_hoe": (">=", 2.5)}
# Issue 11 (edge-class decode): against the peer, long context, per weight precision.
FP32_TARGETS = {"hoe_over_ortgenai": ("<=", 1.10), "long_over_short": ("<=", 1.15), "hoe_over_base": ("<=", 1.10),
                "mod_over_hoe": (">=", 2.8)}
QUANT_TARGETS = {"hoe_over_ortgenai": ("<=", 1.2), "long_over_short": ("<=", 1.15), "hoe_over_base": ("<=", 1.25),
                 "mod_over_hoe": (">=", 2.8),
                 "torch_over_hoe": (">=", 6.0), "torch_compile_over_hoe": (">=", 4.0)}
SWITCH_TARGET_MS = 0.05  # issue 11: a preference switch costs at most this on the host


@dataclass
class LatencyConfig(JsonConfig):
    """What `hoe bench latency` runs."""

    batches: list[int] = field(default_factory=lambda: [1, 4])  # batch sizes
    prompt_lengths: list[int] = field(default_factory=lambda: [32, 256])  # prompt tokens (unpadded)
    new_tokens: int = 64  # tokens generated per run (1 prefill + new_tokens - 1 decode steps)
    repeats: int = 3  # timed round-robin repetitions per case
    warmup_tokens: int = 4  # one untimed run of this length per system and case
    threads: int = 1  # ORT intra-op threads = torch threads
    preference: list[float] | None = None  # None -> a fixed interior point (uniform mixed with a tilt)
    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS))
    long_context: int = 1024  # prompt tokens of the long-context case (0: none); decode runs past it
    long_new_tokens: int = 16  # tokens generated per run in the long-context case
    switch_repeats: int = 200  # preference switches timed for hoe
    remerge_repeats: int = 2  # re-merges (numpy + new session) timed for merged
    bandwidth_mb: int = 256  # array size of the read- and copy-bandwidth measurements
    profile: bool = False  # also profile hoe-ort and base-ort decode per op type (ORT profiler)
    profile_steps: int = 16  # decode steps profiled
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.systems) - set(SYSTEMS))
        if unknown or not self.systems:
            raise ConfigError(f"LatencyConfig.systems must be a non-empty subset of {list(SYSTEMS)}, "
                              f"got {self.systems}")
        for name in ("batches", "prompt_lengths"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ConfigError(f"LatencyConfig.{name} must list positive integers, got {getattr(self, name)}")
        for name in ("new_tokens", "repeats", "threads", "switch_repeats", "remerge_repeats"):
            if getattr(self, name) < 1 or (name == "new_tokens" and self.new_tokens < 2):
                raise ConfigError(f"LatencyConfig.{name} must be >= {2 if name == 'new_tokens' else 1}, "
                                  f"got {getattr(self, name)}")

    @classmethod
    def quick(cls, **overrides) -> LatencyConfig:
        """The batch-1, 32-token-prompt case only, 32 new tokens, 2 repetitions (`--quick`)."""
        base = dict(batches=[1], prompt_lengths=[32], new_tokens=32, repeats=2, switch_repeats=100,
                    remerge_repeats=1, bandwidth_mb=128, long_new_tokens=12)
        return cls(**{**base, **overrides})


def default_preference(m: int) -> list[float]:
    """An interior point every expert takes part in: (uniform + a tilt toward objective 0) / 2."""
    pref = np.full(m, 1.0 / m)
    pref[0] += 1.0
    return (pref / pref.sum()).round(4).tolist()


# ------------------------------------------------------------------------------------------ setup


@dataclass
class Sources:
    """Folders the benchmark reads."""

    hoe_export: Path  # exported HoE folder (OUT_DIR)
    base_export: Path | None  # base-only export (None: made and cached by base_export.py)
    base_hf: Path | None  # Hugging Face base folder (torch system, merged weight lookup)
    hoe_ckpt: Path | None  # HoE checkpoint (torch system); None -> the export's own tensors


def resolve_sources(src: Sources, need_base_export: bool) -> Sources:
    from hoe.contract.folder import Manifest

    manifest = Manifest.load(src.hoe_export, verify=False)
    if not manifest.hoe_enabled:
        raise ConfigError(f"{src.hoe_export} is a plain base export; the latency benchmark needs the HoE export")
    base_hf = src.base_hf or (Path(manifest.source["base"]) if manifest.source.get("base") else None)
    if base_hf is None:
        raise ConfigError("the Hugging Face base folder is needed (torch system, merged weights): pass --base")
    base_export = src.base_export
    if base_export is None and need_base_export:
        from .base_export import cached_base_export

        base_export = cached_base_export(base_hf, like=manifest.data)
    return Sources(src.hoe_export, base_export, Path(base_hf), src.hoe_ckpt)


class Loaded:
    """The systems, their load costs and what the switch/floor measurements need."""

    def __init__(self) -> None:
        self.systems: dict = {}
        self.load_ms: dict[str, float] = {}
        self.load_rss_mb: dict[str, float] = {}
        self.bytes_per_token: dict[str, int] = {}
        self.merger = None
        self.remerges: list[dict[str, float]] = []  # re-merge timings (the first: the merge made at load)
        self.base_manifest = None
        self.router = None
        self.mix = None
        self.ortgenai_folder: Path | None = None


def load_systems(cfg: LatencyConfig, src: Sources, preference, work: Path) -> Loaded:
    from tqdm import tqdm

    from .machine import rss_mb

    out = Loaded()
    for name in tqdm(cfg.systems, desc="loading systems", unit="system"):
        before, start = rss_mb(), time.perf_counter()
        out.systems[name] = _LOADERS[name](cfg, src, preference, work, out)
        out.load_ms[name] = (time.perf_counter() - start) * 1e3
        out.load_rss_mb[name] = max(0.0, rss_mb() - before)
    return out


def _hoe_bytes(src: Sources) -> int:
    from hoe.contract.folder import Manifest

    from .floor import file_bytes, graph_weight_bytes

    m = Manifest.load(src.hoe_export, verify=False)
    graph = graph_weight_bytes(src.hoe_export / m.data["model"]["file"])
    return graph if m.experts_baked else graph + file_bytes(m.path("experts"), m.path("routers"))  # baked: inside


def _torch_bytes(src: Sources) -> int:
    """What the PyTorch systems read per token: the HF base's own (fp32) weights + experts and routers,
    whatever precision the export's graph has."""
    from hoe.contract.folder import Manifest

    from .floor import file_bytes

    m = Manifest.load(src.hoe_export, verify=False)
    return file_bytes(*sorted(Path(src.base_hf).glob("*.safetensors")), m.path("experts"), m.path("routers"))


def _load_hoe(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest
    from hoe.core.preference import PreferenceRouter

    from .systems import BackendSystem, backend_config, load_backend

    out.router = PreferenceRouter.from_manifest(Manifest.load(src.hoe_export, verify=False))
    out.mix = out.router.mix(preference)  # [K]
    out.bytes_per_token["hoe-ort"] = _hoe_bytes(src)
    return BackendSystem("hoe-ort", load_backend(src.hoe_export, backend_config(cfg.threads)), out.mix)


def _load_torch(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest
    from hoe.core.preference import PreferenceRouter

    from .systems import BackendSystem, backend_config, load_backend

    router = PreferenceRouter.from_manifest(Manifest.load(src.hoe_export, verify=False))
    config = backend_config(cfg.threads, "torch", base=str(src.base_hf),
                            hoe=str(src.hoe_ckpt) if src.hoe_ckpt else None)
    out.bytes_per_token["torch"] = _torch_bytes(src)
    return BackendSystem("torch", load_backend(src.hoe_export, config), router.mix(preference))


def _load_base(cfg, src, preference, work, out):
    from .floor import graph_weight_bytes
    from .systems import BackendSystem, backend_config, load_backend

    out.bytes_per_token["base-ort"] = graph_weight_bytes(src.base_export / "model.onnx")
    return BackendSystem("base-ort", load_backend(src.base_export, backend_config(cfg.threads)), np.zeros(0))


def _load_mod(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest

    from .systems import ModSystem, backend_config, expert_weights, load_backend, vertex_folder

    folder = vertex_folder(src.hoe_export, work)
    manifest = Manifest.load(folder, verify=False)
    weights = expert_weights(manifest, preference)
    system = ModSystem(load_backend(folder, backend_config(cfg.threads)), weights, len(manifest.anchors))
    out.bytes_per_token["mod"] = _hoe_bytes(src) * len(system.members)
    return system


def _load_merged(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest
    from hoe.contract.manifest import read_checkpoint_tensors

    from .floor import graph_weight_bytes
    from .merge import Merger, locate_weights, read_base_weights, read_initializers, remerge
    from .systems import BackendSystem, backend_config

    hoe_manifest = Manifest.load(src.hoe_export, verify=False)
    out.base_manifest = Manifest.load(src.base_export, verify=False)
    modules = hoe_manifest.hoe["target_modules"]
    initializers = read_initializers(src.base_export / out.base_manifest.data["model"]["file"])
    slots = locate_weights(initializers, read_base_weights(src.base_hf, modules))
    experts = read_checkpoint_tensors(src.hoe_export)  # canonical [E,r,in] / [E,out,r], scaling folded into B
    out.merger = Merger(initializers, slots, experts, hoe_manifest.hoe["expert_prefs"])
    del initializers
    backend, times = remerge(out.merger, out.base_manifest, backend_config(cfg.threads), preference)
    out.remerges.append(times)  # a merge from scratch is a re-merge: it counts as the first sample
    out.bytes_per_token["merged"] = graph_weight_bytes(src.base_export / "model.onnx")
    return BackendSystem("merged", backend, np.zeros(0))


def _max_length(cfg: LatencyConfig) -> int:
    return max([*cfg.prompt_lengths, cfg.long_context]) + max(cfg.new_tokens, cfg.long_new_tokens) + 1


def _load_ortgenai(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest

    from .floor import graph_weight_bytes
    from .ortgenai import OrtGenaiSystem, cached_build, model_file

    folder = cached_build(src.base_hf, Manifest.load(src.hoe_export, verify=False).data.get("quantization"))
    out.bytes_per_token["ortgenai"] = graph_weight_bytes(model_file(folder))
    out.ortgenai_folder = folder
    return OrtGenaiSystem(folder, cfg.threads, _max_length(cfg))


def _load_torch_compile(cfg, src, preference, work, out):
    from hoe.contract.folder import Manifest
    from hoe.core.checkpoint import HoECheckpoint
    from hoe.core.loading import hoe_from_checkpoint, load_base
    from hoe.core.preference import PreferenceRouter
    from hoe.runtime.backends.pytorch import _export_checkpoint

    from .torch_compile import TorchCompileSystem

    manifest = Manifest.load(src.hoe_export, verify=False)
    router = PreferenceRouter.from_manifest(manifest)
    base = load_base(src.base_hf)
    ckpt = HoECheckpoint.load(src.hoe_ckpt) if src.hoe_ckpt is not None else _export_checkpoint(src.hoe_export)
    out.bytes_per_token["torch-compile"] = _torch_bytes(src)
    return TorchCompileSystem(hoe_from_checkpoint(base, ckpt), router.mix(preference),
                              cfg.threads, _max_length(cfg))


_LOADERS = {"hoe-ort": _load_hoe, "torch": _load_torch, "base-ort": _load_base, "mod": _load_mod,
            "merged": _load_merged, "ortgenai": _load_ortgenai, "torch-compile": _load_torch_compile}


# ------------------------------------------------------------------------------------------ measuring


@dataclass
class Case:
    """One timed case: `batch` rows of a `prompt_len`-token prompt, `new_tokens` generated per run."""

    key: str
    batch: int
    prompt_len: int
    new_tokens: int
    long_context: bool = False


def time_cases(loaded: Loaded, cfg: LatencyConfig, cases: list[Case], vocab: int) -> dict[str, dict]:
    """Round-robin repetitions of every case -> per case key, per-system measurements. Repetition r runs each
    case in turn, and within it every system once starting with system r, so a slow phase of the machine weighs
    on every case and system alike (the long context's ratio to the short one included)."""
    from .machine import PeakRss
    from .systems import greedy_run
    from .timing import rotated

    names = list(loaded.systems)
    prompts = {}
    for case in cases:
        rng = np.random.default_rng(cfg.seed + 1000 * case.batch + case.prompt_len)
        prompts[case.key] = rng.integers(3, vocab, size=(case.batch, case.prompt_len), dtype=np.int64)
        for name in names:  # warm-up: allocator arenas, thread pools, first-shape kernels
            greedy_run(loaded.systems[name], prompts[case.key], min(cfg.warmup_tokens, case.new_tokens))
    runs = {c.key: {n: [] for n in names} for c in cases}
    growth = {c.key: {n: 0.0 for n in names} for c in cases}
    for rep in range(cfg.repeats):
        for case in cases:
            log.info("repetition %d/%d: batch %d, prompt %d, %d new tokens", rep + 1, cfg.repeats, case.batch,
                     case.prompt_len, case.new_tokens)
            for name in rotated(names, rep):
                with PeakRss() as mem:
                    runs[case.key][name].append(greedy_run(loaded.systems[name], prompts[case.key], case.new_tokens))
                growth[case.key][name] = max(growth[case.key][name], mem.growth_mb)
    return {c.key: {"batch": c.batch, "prompt_tokens": c.prompt_len, **({"long_context": True} if c.long_context
                                                                          else {}),
                    "systems": _case_systems(loaded, c.batch, runs[c.key], growth[c.key])} for c in cases}


def _case_systems(loaded: Loaded, batch: int, runs: dict[str, list], growth: dict[str, float]) -> dict:
    """One case's runs per system -> its measurements."""
    from .timing import summary

    out = {}
    for name, done in runs.items():
        decode = summary([ms for run in done for ms in run.step_ms])
        out[name] = {"decode_ms_per_token": {"median": decode["median"], "p90": decode["p90"], "n": decode["n"]},
                     "decode_ms_per_repetition": [summary(run.step_ms)["median"] for run in done],
                     "ttft_ms": summary([run.ttft_ms for run in done])["median"],
                     "tokens_per_s": batch * 1e3 / decode["median"],
                     "peak_rss_mb": loaded.load_rss_mb[name] + growth[name]}
    if "hoe-ort" in runs and "torch" in runs:
        out["hoe-ort"]["same_tokens_as_torch"] = bool(np.array_equal(runs["hoe-ort"][-1].tokens,
                                                                     runs["torch"][-1].tokens))
    return out


# Each ratio the bench reports: (numerator, denominator) systems. The first four are always present (None when a
# side was not timed), the others only when both were.
RATIO_PAIRS = {"torch_over_hoe": ("torch", "hoe-ort"), "hoe_over_base": ("hoe-ort", "base-ort"),
               "mod_over_hoe": ("mod", "hoe-ort"), "merged_over_base": ("merged", "base-ort"),
               "hoe_over_ortgenai": ("hoe-ort", "ortgenai"), "base_over_ortgenai": ("base-ort", "ortgenai"),
               "torch_compile_over_hoe": ("torch-compile", "hoe-ort")}
_ALWAYS = ("torch_over_hoe", "hoe_over_base", "mod_over_hoe", "merged_over_base")


def ratios(systems: dict) -> dict[str, float | None]:
    """Ratios of the systems' decode medians (RATIO_PAIRS)."""
    out = {}
    for key, (a, b) in RATIO_PAIRS.items():
        timed = a in systems and b in systems
        if timed or key in _ALWAYS:
            out[key] = (systems[a]["decode_ms_per_token"]["median"] / systems[b]["decode_ms_per_token"]["median"]
                        if timed else None)
    return out


def paired_ratios(systems: dict) -> dict[str, dict[str, float]]:
    """Per pair of RATIO_PAIRS timed in both: median, min and max over the repetitions of the ratio of the two
    systems' decode medians within one repetition. A repetition runs every system once, back to back, so a slow
    phase of the machine weighs on both sides of its ratio (the ratio of medians mixes phases)."""
    out = {}
    for key, (a, b) in RATIO_PAIRS.items():
        if a in systems and b in systems:
            r = (np.asarray(systems[a]["decode_ms_per_repetition"])
                 / np.asarray(systems[b]["decode_ms_per_repetition"]))
            out[key] = {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
    return out


def long_over_short(short: dict, long: dict) -> dict[str, float]:
    """decode ms/token past the long prompt / past the short prompt, per system timed in both cases."""
    return {n: long[n]["decode_ms_per_token"]["median"] / short[n]["decode_ms_per_token"]["median"]
            for n in long if n in short}


def paired_long_over_short(short: dict, long: dict) -> dict[str, dict[str, float]]:
    """Per system timed in both cases: median, min and max over the repetitions of the ratio of its long and
    short decode medians within one repetition (time_cases runs both cases in each)."""
    out = {}
    for n in long:
        if n in short:
            r = (np.asarray(long[n]["decode_ms_per_repetition"])
                 / np.asarray(short[n]["decode_ms_per_repetition"]))
            out[n] = {"median": float(np.median(r)), "min": float(r.min()), "max": float(r.max())}
    return out


def steady_long_over_short(loaded: Loaded, cfg: LatencyConfig, vocab: int) -> dict[str, dict]:
    """Per system: decode past the long prompt against past the short one, their steps alternating after both
    prefills (systems.alternating_steps), so both sides see the same state of the machine (on this VM a 3 s
    prefill, or any 3 s compute burst, slows the next ~100 steps of any context by up to 1.4x)."""
    from .systems import alternating_steps

    rng = np.random.default_rng(cfg.seed + 7)
    short, long = (rng.integers(3, vocab, size=(1, n), dtype=np.int64) for n in (cfg.prompt_lengths[0],
                                                                                 cfg.long_context))
    out = {}
    for name, system in loaded.systems.items():
        a, b = (np.asarray(t) for t in alternating_steps(system, [short, long], cfg.long_new_tokens - 1))
        out[name] = {"short_ms": float(np.median(a)), "long_ms": float(np.median(b)),
                     "ratio": float(np.median(b) / np.median(a)), "paired": float(np.median(b / a))}
    return out


def switch_times(loaded: Loaded, cfg: LatencyConfig, preference) -> dict:
    """hoe: a new preference -> router_mix (what Generator.set_preference does), cycling through the case's
    preference rolled; hoe_random: a fresh random preference each call (the search paths included); merged: a
    full re-merge."""
    from .merge import remerge
    from .systems import backend_config
    from .timing import summary, time_calls

    out = {}
    m = len(preference)
    prefs = [np.roll(np.asarray(preference), i) for i in range(m)]
    if loaded.router is not None:
        counter = iter(range(10**9))
        router = loaded.router

        def switch():
            p = prefs[next(counter) % m]
            return router.route(p, 1)[1]

        out["hoe"] = summary(time_calls(switch, cfg.switch_repeats, warmup=5))
        fresh = iter(np.random.default_rng(cfg.seed).dirichlet(np.ones(m), cfg.switch_repeats + 5))
        out["hoe_random"] = summary(time_calls(lambda: router.route(next(fresh), 1)[1], cfg.switch_repeats, warmup=5))
    if loaded.merger is not None:
        parts = list(loaded.remerges)
        for i in range(len(parts), cfg.remerge_repeats):
            backend, times = remerge(loaded.merger, loaded.base_manifest, backend_config(cfg.threads),
                                     prefs[(i + 1) % m].tolist())
            backend.deactivate()
            parts.append(times)
        out["merged_remerge"] = {k: summary([p[k] for p in parts]) for k in parts[0]}
    return out


def run_latency(src: Sources, cfg: LatencyConfig | None = None) -> dict:
    """Load every system, time every case round-robin, measure switches and the floor -> the result dict."""
    from hoe.contract.folder import Manifest

    from .floor import bandwidths, floor_ms
    from .machine import machine_info, peak_mb
    from .timing import set_torch_threads

    cfg = cfg or LatencyConfig()
    set_torch_threads(cfg.threads)
    src = resolve_sources(src, need_base_export=bool({"base-ort", "merged"} & set(cfg.systems)))
    manifest = Manifest.load(src.hoe_export, verify=True)
    preference = cfg.preference or default_preference(len(manifest.objectives))
    machine = machine_info()
    before = bandwidths(cfg.bandwidth_mb)
    with tempfile.TemporaryDirectory(prefix="hoe-bench-") as work:
        loaded = load_systems(cfg, src, preference, Path(work))
        switch = switch_times(loaded, cfg, preference)
        cases = time_cases(loaded, cfg, case_list(cfg, manifest), manifest.vocab_size)
        steady = (steady_long_over_short(loaded, cfg, manifest.vocab_size)
                  if any(c.get("long_context") for c in cases.values()) else {})
        compile_ms = getattr(loaded.systems.get("torch-compile"), "compile_ms", None)
        for system in loaded.systems.values():
            system.close()
        profile = run_profiles(cfg, src, loaded, Path(work)) if cfg.profile else None
    after = bandwidths(cfg.bandwidth_mb)
    bandwidth = {k: max(v, after[k]) for k, v in before.items()}  # best of before and after the timing
    floors = {n: floor_ms(bts, bandwidth["read_gbs"]) for n, bts in loaded.bytes_per_token.items()}
    copy_floors = {n: floor_ms(bts, bandwidth["copy_gbs"]) for n, bts in loaded.bytes_per_token.items()}
    top_floor = floors.get("hoe-ort", min(floors.values()) if floors else float("nan"))
    for case in cases.values():
        for name, entry in case["systems"].items():
            median = entry["decode_ms_per_token"]["median"]
            entry["floor_ms_per_token"] = floors.get(name)
            entry["over_floor"] = median / floors[name] if name in floors else None
            entry["over_copy_floor"] = median / copy_floors[name] if name in copy_floors else None
        case["ratios"] = ratios(case["systems"])
        case["paired_ratios"] = paired_ratios(case["systems"])
    machine["load_average_after"] = machine_info()["load_average"]
    result = _assemble(cfg, src, manifest, preference, machine, bandwidth, loaded, switch, cases, top_floor, peak_mb())
    if steady:
        result["steady_long_over_short_by_system"] = steady
        if "hoe-ort" in steady:
            result["ratios"]["long_over_short_steady"] = steady["hoe-ort"]["ratio"]
    if compile_ms is not None:
        result["torch_compile_ms"] = compile_ms  # first call per shape: compile + one run (not in the decode times)
    if profile is not None:
        result["profile"] = profile
    return result


def case_list(cfg: LatencyConfig, manifest) -> list[Case]:
    """batches x prompt lengths, then batch 1 past a `long_context`-token prompt (unless off or too long)."""
    cases = [Case(f"batch{b}_prompt{p}", b, p, cfg.new_tokens) for b in cfg.batches for p in cfg.prompt_lengths]
    if not cfg.long_context:
        return cases
    context = manifest.arch.get("max_position_embeddings") or 0
    if cfg.long_context + cfg.long_new_tokens > context:
        log.warning("long-context case skipped: %d + %d tokens exceed the context %d", cfg.long_context,
                    cfg.long_new_tokens, context)
        return cases
    return [*cases, Case(f"batch1_prompt{cfg.long_context}", 1, cfg.long_context, cfg.long_new_tokens, True)]


def run_profiles(cfg: LatencyConfig, src: Sources, loaded: Loaded, work: Path) -> dict:
    """Per-op-type decode ms/token of hoe-ort and base-ort (batch 1, prompt 32), ORT profiler on."""
    from .profile import profile_decode

    out = {}
    if loaded.mix is not None:
        out["hoe-ort"] = profile_decode(src.hoe_export, loaded.mix, cfg.threads, work, steps=cfg.profile_steps)
    if src.base_export is not None:
        out["base-ort"] = profile_decode(src.base_export, np.zeros(0, np.float32), cfg.threads, work,
                                         steps=cfg.profile_steps)
    return out


def _assemble(cfg, src, manifest, preference, machine, bandwidth, loaded, switch, cases, top_floor, peak) -> dict:
    key = "batch1_prompt32" if "batch1_prompt32" in cases else next(iter(cases))
    head = cases[key]
    long = next((c for c in cases.values() if c.get("long_context")), None)
    by_system = long_over_short(head["systems"], long["systems"]) if long is not None else {}
    paired = paired_long_over_short(head["systems"], long["systems"]) if long is not None else {}
    if "hoe-ort" in by_system:
        head["ratios"]["long_over_short"] = by_system["hoe-ort"]
        head["paired_ratios"]["long_over_short"] = paired["hoe-ort"]
    result = {
        "machine": machine, "threads": cfg.threads,
        "case": {"batch": head["batch"], "prompt_tokens": head["prompt_tokens"], "new_tokens": cfg.new_tokens},
        "systems": head["systems"], "ratios": head["ratios"], "paired_ratios": head["paired_ratios"],
        "preference_switch_ms": {"hoe": switch.get("hoe", {}).get("median"),
                                 "merged_remerge": switch.get("merged_remerge", {}).get("total_ms", {}).get("median")},
        "floor_ms_per_token": top_floor,
        "read_bandwidth_gbs": bandwidth["read_gbs"],
        "copy_bandwidth_gbs": bandwidth["copy_gbs"],
        "bytes_per_token": loaded.bytes_per_token,
        "preference": preference,
        "switch_detail": switch,
        "long_over_short_by_system": by_system,
        "paired_long_over_short_by_system": paired,
        "weights": (manifest.data.get("quantization") or {}).get("weights", "fp32"),
        "load_ms": loaded.load_ms, "process_peak_rss_mb": peak,
        "cases": cases, "config": cfg.to_dict(),
        "model": {"export": str(src.hoe_export), "base_export": str(src.base_export) if src.base_export else None,
                  "architecture": manifest.arch, "objectives": manifest.objectives,
                  "n_experts": manifest.hoe.get("n_experts"), "rank": manifest.hoe.get("rank"),
                  "n_routers": manifest.hoe.get("n_routers"),
                  "quantization": manifest.data.get("quantization"),
                  "ortgenai_build": str(loaded.ortgenai_folder) if loaded.ortgenai_folder else None},
        "notes": {"mod": "each expert model is the HoE graph held at that expert's vertex (constant one-hot "
                         "routers, router_mix e_j), run by the same runtime; one forward per member per token",
                  "merged": "W_pre + sum_j w_j s_j B_j A_j in numpy, baked into the base-ort graph via "
                            "SessionOptions.add_initializer; remerge = numpy merge + new session",
                  "peak_rss_mb": "RSS retained by loading the system + peak RSS growth while it generates",
                  "ortgenai": "onnxruntime-genai's model builder on the same HF base at the export's weight "
                              "precision (base only, no experts), its Generator fed our greedy tokens",
                  "torch-compile": "hoe.core's HoEModel, each decoder block under torch.compile(dynamic=False) "
                                   "(regional: one graph per shape shared by all blocks) with a StaticCache; "
                                   "torch_compile_ms is the first call of each shape (compile), untimed",
                  "bandwidth": "floor: numpy max over config.bandwidth_mb MiB, bytes read per second, 1 "
                               "thread; copy_bandwidth_gbs: numpy copy, bytes read + written per second (STREAM "
                               "convention); best of 5, before and after the timing"},
    }
    result["targets"] = targets(result)
    return result


def targets(result: dict) -> dict:
    out = {}
    quantized = result.get("weights", "fp32") in ("int4", "int8")
    goals = {**TARGETS, **(QUANT_TARGETS if quantized else FP32_TARGETS)}
    for name, (op, bound) in goals.items():
        value = result["ratios"].get(name)
        met = None if value is None else (value >= bound if op == ">=" else value <= bound)
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    switch = result["preference_switch_ms"]["hoe"]
    out["preference_switch_ms"] = {"target": f"<= {SWITCH_TARGET_MS}", "value": switch,
                                   "met": None if switch is None else switch <= SWITCH_TARGET_MS}
    return out


# ------------------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "latency", help="decode latency of hoe-ort vs torch, base-ort, MOD and merged, interleaved in one run",
        description="Time our runtime (hoe-ort) against PyTorch eager (torch), the base model without experts "
                    "(base-ort), MOD logit mixing (mod) and Rewarded-Soups weight merging (merged), round-robin in "
                    "one process: TTFT, decode ms/token (median, p90), tokens/s, peak RSS, preference switch vs "
                    "re-merge time, and the memory-bandwidth floor. Prints a markdown table.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="exported HoE folder (hoe export)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG plot here (needs matplotlib)")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op and torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="batch 1, prompt 32, 32 new tokens, 2 repetitions")
    p.add_argument("--base", help="Hugging Face base folder (default: the export's source.base)")
    p.add_argument("--hoe", help="HoE checkpoint for the torch system (default: the export's own tensors)")
    p.add_argument("--base-export", help="base-only export for base-ort/merged (default: exported once and cached)")
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, help=f"subset of {', '.join(SYSTEMS)}")
    p.add_argument("--repeats", type=int, help="round-robin repetitions per case (default 3, quick 2)")
    p.add_argument("--new-tokens", type=int, help="new tokens per run (default 64, quick 32)")
    p.add_argument("--preference", help="comma-separated preference (default: an interior point)")
    p.add_argument("--profile", action="store_true",
                   help="also profile hoe-ort and base-ort decode per op type (ORT profiler) and print it")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from hoe.core.preference import parse_preference

    from .report import latency_plot, latency_tables, write_json

    overrides = {k: v for k, v in (("threads", args.threads), ("repeats", args.repeats),
                                   ("new_tokens", args.new_tokens), ("systems", args.systems),
                                   ("profile", args.profile or None)) if v is not None}
    if args.preference:
        overrides["preference"] = parse_preference(args.preference)
    cfg = LatencyConfig.quick(**overrides) if args.quick else LatencyConfig(**overrides)
    src = Sources(Path(args.out_dir), Path(args.base_export) if args.base_export else None,
                  Path(args.base) if args.base else None, Path(args.hoe) if args.hoe else None)
    result = run_latency(src, cfg)
    print(latency_tables(result))
    if args.json:
        write_json(args.json, result)
    if args.plot:
        latency_plot(result, args.plot)
    return 0
