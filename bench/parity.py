"""`hoe bench parity`: every backend on this machine against the PyTorch reference (hoe.core's HoEModel).

    shape sweep  batch {1, 3} × new tokens {1, 7} × past {0, 5, 40}, left padding (row b: pads[b] columns),
                 at every preference (vertices, the uniform point, a random interior point; batch rows rotate
                 through them). Each backend runs the past through its own forward and feeds its own
                 present K/V back, as in decoding; logits of every real new position are compared.
    greedy       32 greedy tokens, batch 3, left-padded prompts of different lengths, one preference per row.
                 With an int8 KV cache each side rounds its own cache rows, and two free-running decodes
                 drift apart: the reference leads, at every step continuing from the backend's own rows (as
                 export validation does), and every step is judged.

Runners, comparison and the rules below are hoe.contract.parity's, the comparator export validation uses too.
A case passes when |logits - ref| <= atol + rtol·max|ref| everywhere (the case's logit scale, as the export
validation: fp32 rounding grows with the scale of the activations, not with each logit — on SmolLM2, ORT and
torch fp32 are each 2e-4..7e-4 from a float64 reference at |logits| ~35, see export/validate.py).

An fp32 case that fails this is judged again against the float64 reference (export/fp64_reference.py): it
passes when the backend is within `fp64_factor` (4) times the fp32 reference's own distance from float64 on
that input. Why: some inputs are ill-conditioned for every fp32 implementation. On the embedded SmolLM2
export, batch 1 / 7 new tokens / past 0 at the interior preference, positions 0-2 carry massive activations
(|h| ~19,400 in layers 11-27, fp32 ulp 2e-3) that layer 28 cancels down to ~4,900: torch fp32 lands 1.9e-3
and ORT 3.6e-3 from float64 there (5.5e-3 apart), while the other 19 prefill cases are 2e-5..2.6e-4 off. Both
are fp32 rounding of the residual stream, not a defect of the graph; over the 20 prefill cases the ratio
ORT/torch distance to float64 ranged 0.26..2.8, hence the factor 4.

Greedy passes when every row agrees with the reference, or first departs at a near-tie of the reference (top-2
margin <= 2·atol + rtol·|top-1|). `max_rel` is max |diff| / max |ref| over the compared logits.

A quantized export (`hoe export --weights int4`) is compared with the reference holding the graph's own
dequantized base weights (export/quantize.py), so parity still proves the graph; what the quantization
costs against the fp32 model is `quantization_cost` (export/quality.py: greedy agreement over 64 tokens on
held-out prompts, next-token KL). MatMulNBits graphs at an accuracy level > 0 (4 = int8 activations) are
judged on a twin folder whose MatMulNBits run at level 0 (fp32 activations: exactly x·Ŵ), at the fp32
tolerance, as export validation does; the shipped level's rounding is part of the quantization cost.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hoe.contract import kv_int8
from hoe.contract.parity import FeedRunner, agreement, compare, within_fp64
from hoe.core.config import JsonConfig
from hoe.core.errors import BackendError, ConfigError
from hoe.core.positions import positions

log = logging.getLogger(__name__)

# Default tolerances per graph dtype: (atol, rtol) on logits.
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (5e-2, 1e-2), "bf16": (1e-1, 2e-2),
              "int8-activations": (5e-2, 3e-2)}  # quantized graphs whose MatMuls quantize activations to int8


@dataclass
class ParityConfig(JsonConfig):
    """What `hoe bench parity` sweeps and how strict it is."""

    batches: list[int] = field(default_factory=lambda: [1, 3])  # batch sizes of the shape sweep
    new_tokens: list[int] = field(default_factory=lambda: [1, 7])  # T: tokens in the compared forward
    past: list[int] = field(default_factory=lambda: [0, 5, 40])  # P: tokens already in the KV cache
    pads: list[int] = field(default_factory=lambda: [0, 3, 6])  # left padding of row b: pads[b % len] columns
    greedy_tokens: int = 32  # greedy agreement length
    greedy_prompts: list[int] = field(default_factory=lambda: [6, 11, 3])  # prompt lengths of the greedy batch
    atol: float | None = None  # None -> TOLERANCES[dtype]
    rtol: float | None = None
    threads: int = 1  # ORT intra-op and torch threads
    seed: int = 0  # token ids and the random interior preference
    backends: list[str] | None = None  # labels to run ("ort:cpu", "ort:cuda", "trt"); None -> all available
    fp64_factor: float = 4.0  # fp32: a failing case passes within this times torch fp32's distance to float64
    quality: bool = True  # quantized exports: greedy agreement / next-token KL vs the fp32 model (quality.py)

    def __post_init__(self) -> None:
        for name in ("batches", "new_tokens", "pads", "greedy_prompts"):
            values = getattr(self, name)
            if not values or any(int(v) < (0 if name == "pads" else 1) for v in values):
                raise ConfigError(f"ParityConfig.{name} must be a non-empty list of positive integers, got {values}")
        if any(int(p) < 0 for p in self.past) or not self.past:
            raise ConfigError(f"ParityConfig.past must be a non-empty list of integers >= 0, got {self.past}")
        if self.greedy_tokens < 1:
            raise ConfigError(f"ParityConfig.greedy_tokens must be >= 1, got {self.greedy_tokens}")


# ------------------------------------------------------------------------------------------ inputs


def preferences(n_objectives: int, seed: int = 0) -> list[list[float]]:
    """Vertices, the uniform point and one random interior point: m + 2 preferences (>= 4 for m >= 2)."""
    eye = np.eye(n_objectives).tolist()
    uniform = [1.0 / n_objectives] * n_objectives
    interior = np.random.default_rng(seed).dirichlet(np.full(n_objectives, 2.0))
    interior = np.clip(interior, 0.05, None)
    return eye + [uniform, (interior / interior.sum()).round(4).tolist()]


def left_padded_mask(batch: int, width: int, pads: list[int]) -> np.ndarray:
    """[B, width] int64: row b starts with min(pads[b], width - 1) zeros (at least one real token)."""
    mask = np.ones((batch, width), dtype=np.int64)
    for b in range(batch):
        mask[b, : min(pads[b % len(pads)], width - 1)] = 0
    return mask


@dataclass
class Case:
    batch: int
    new_tokens: int
    past: int
    rows: list[list[float]]  # preference of each batch row
    ids: np.ndarray  # [B, P+T]
    mask: np.ndarray  # [B, P+T]


def sweep(cfg: ParityConfig, prefs: list[list[float]], vocab: int) -> list[Case]:
    rng = np.random.default_rng(cfg.seed)
    cases = []
    for i in range(len(prefs)):
        for b in cfg.batches:
            for t in cfg.new_tokens:
                for p in cfg.past:
                    rows = [prefs[(i + r) % len(prefs)] for r in range(b)]
                    ids = rng.integers(0, vocab, size=(b, p + t), dtype=np.int64)
                    cases.append(Case(b, t, p, rows, ids, left_padded_mask(b, p + t, cfg.pads)))
    return cases


# ------------------------------------------------------------------------------------------ running


class Runner:
    """A backend plus what turns preferences into router_mix rows, on its own KV cache (hoe.contract.parity)."""

    def __init__(self, label: str, backend, router) -> None:
        self.label, self.backend, self.router = label, backend, router
        manifest = backend.manifest
        self.kv = FeedRunner(backend.infer, [manifest.kv_names(i) for i in range(manifest.num_layers)],
                             manifest.kv_spec())

    def mix(self, rows) -> np.ndarray:
        return self.router.route(rows, len(rows))[1]  # [B, K] float32

    def forward(self, case: Case, past: dict | None = None) -> np.ndarray:
        """The past (if any), then the new tokens on the backend's own present K/V -> logits [B, T, V]. `past`:
        another runner's cache after the past tokens (`past_kv`), used instead of this one's."""
        pos = positions(case.mask)
        mix = self.mix(case.rows) if self.router.enabled else None
        self.kv.reset(case.batch)
        p = case.past
        if p > 0 and past is not None:
            self.kv.past = dict(past)
        elif p > 0:
            self.kv.run(case.ids[:, :p], case.mask[:, :p], pos[:, :p], mix)
        self.past_kv = dict(self.kv.past)
        return self.kv.run(case.ids[:, p:], case.mask, pos[:, p:], mix)["logits"].astype(np.float32)

    def greedy(self, prompts: list[list[int]], rows, n: int, pad: int) -> tuple[np.ndarray, ...]:
        """Greedy tokens [B, n], the top-1 minus top-2 logit margin [B, n] and the top-1 logit [B, n], through
        the runtime's own step API."""
        ids, mask, width = left_padded(prompts, n, pad)
        mix, state = self.mix(rows), self.backend.new_state(len(prompts))
        tokens, margins, top = (np.zeros((len(prompts), n), dtype=t) for t in (np.int64, np.float32, np.float32))
        pos, pending = positions(mask[:, :width]), ids
        for i in range(n):
            cols = width + i
            logits = self.backend.step(state, pending, np.ascontiguousarray(mask[:, :cols]), pos, mix)  # [B, V]
            tokens[:, i], margins[:, i], top[:, i] = top_two(logits)
            mask[:, cols] = 1
            pending, pos = tokens[:, i:i + 1].copy(), positions(mask[:, :cols + 1])[:, -1:]
        return tokens, margins, top


def left_padded(prompts: list[list[int]], n: int, pad: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Prompts left-padded to one width -> ids [B, W], mask [B, W + n] (ones on the prompts) and W."""
    b, width = len(prompts), max(len(p) for p in prompts)
    ids = np.full((b, width), pad, dtype=np.int64)
    mask = np.zeros((b, width + n), dtype=np.int64)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):width] = p, 1
    return ids, mask, width


def top_two(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """logits [B, V] -> argmax [B], top-1 minus top-2 margin [B], top-1 [B]."""
    top2 = np.sort(np.partition(logits, -2, axis=-1)[:, -2:], axis=-1)
    return logits.argmax(-1), top2[:, 1] - top2[:, 0], top2[:, 1]


def greedy_on_its_cache(ref: Runner, run: Runner, prompts: list[list[int]], rows, n: int,
                        pad: int) -> tuple[np.ndarray, ...]:
    """Greedy decoding led by the reference, which at every step continues from `run`'s own cache rows (an int8
    cache: each side rounds its rows, so on their own caches two decodes drift apart; export/validate.py does
    the same) -> the reference's tokens, margins and top-1 logits and `run`'s tokens, each [B, n]."""
    ids, mask, width = left_padded(prompts, n, pad)
    ref_mix, run_mix = ref.mix(rows), run.mix(rows)
    run.kv.reset(len(prompts))
    ref_tokens, margins, top, tokens = (np.zeros((len(prompts), n), dtype=t)
                                        for t in (np.int64, np.float32, np.float32, np.int64))
    pos, pending = positions(mask[:, :width]), ids
    for i in range(n):
        m = np.ascontiguousarray(mask[:, :width + i])
        ref.kv.past = dict(run.kv.past)
        want = ref.kv.run(pending, m, pos, ref_mix)["logits"][:, -1].astype(np.float32)  # [B, V]
        got = run.kv.run(pending, m, pos, run_mix)["logits"][:, -1]
        ref_tokens[:, i], margins[:, i], top[:, i] = top_two(want)
        tokens[:, i] = got.argmax(-1)
        mask[:, width + i] = 1
        pending, pos = ref_tokens[:, i:i + 1].copy(), positions(mask[:, :width + i + 1])[:, -1:]
    return ref_tokens, margins, top, tokens


# ------------------------------------------------------------------------------------------ backends


def candidate_labels() -> list[str]:
    """"ort:<provider>" for every CPU/CUDA/TensorRT provider onnxruntime offers, then other registered backends."""
    from hoe.runtime.backends import available_backends

    labels = []
    try:
        import onnxruntime as ort

        have = ort.get_available_providers()
        labels += [f"ort:{alias}" for alias, name in (("cpu", "CPUExecutionProvider"),
                   ("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")) if name in have]
    except ImportError:
        log.warning("onnxruntime is not installed: no ort backend to compare")
    return labels + [b for b in available_backends() if b not in ("ort", "torch")]


def open_runner(label: str, folder: Path, threads: int) -> Runner:
    from hoe.contract.folder import Manifest
    from hoe.core.preference import PreferenceRouter
    from hoe.runtime.backends import BackendConfig, create_backend

    name, _, provider = label.partition(":")
    manifest = Manifest.load(folder, verify=False)
    config = BackendConfig(name=name, threads=threads, providers=[provider] if provider else None)
    backend = create_backend(manifest, config).activate()
    if getattr(backend, "fallback", None):
        backend.deactivate()
        raise BackendError(f"{label} fell back: {backend.fallback}")
    return Runner(label, backend, PreferenceRouter.from_manifest(manifest))


def reference_runner(folder: Path, threads: int, base: str | None, hoe: str | None) -> Runner:
    from hoe.contract.folder import Manifest
    from hoe.core.preference import PreferenceRouter
    from hoe.export.quantize import dequantize_reference
    from hoe.runtime.backends import BackendConfig, create_backend

    manifest = Manifest.load(folder, verify=False)
    backend = create_backend(manifest, BackendConfig(name="torch", threads=threads, base=base, hoe=hoe)).activate()
    dequantize_reference(backend.model, manifest.data.get("quantization"))  # the graph's own base weights
    return Runner("torch", backend, PreferenceRouter.from_manifest(manifest))


def quantization_cost(folder: Path, threads: int, base: str | None, hoe: str | None) -> dict | None:
    """A quantized export against its fp32 model (export/quality.py); None for fp32 weights."""
    from hoe.contract.folder import Manifest
    from hoe.export.quality import QualityConfig, quality_report
    from hoe.runtime.backends.pytorch import _export_checkpoint

    manifest = Manifest.load(folder, verify=False)
    if (manifest.data.get("quantization") or {}).get("weights", "fp32") == "fp32":
        return None
    base = base or manifest.source.get("base")
    if base is None:
        raise ConfigError(f"{folder} records no source.base: pass --base for the fp32 reference")
    return quality_report(folder, base, hoe or _export_checkpoint(folder), QualityConfig(threads=threads))


# ------------------------------------------------------------------------------------------ the benchmark


def run_parity(folder: str | Path, cfg: ParityConfig | None = None, base: str | None = None,
               hoe: str | None = None) -> dict:
    """Every available backend against the PyTorch reference on an exported folder -> the result dict."""
    from hoe.contract.folder import Manifest

    cfg, folder = cfg or ParityConfig(), Path(folder)
    manifest = Manifest.load(folder, verify=True)
    with tempfile.TemporaryDirectory(prefix="hoe-parity-") as scratch:
        graph_folder = _exact_twin(folder, Path(scratch))  # the folder itself when its graph computes exactly
        return _run_parity(cfg, folder, graph_folder, manifest, base, hoe)


def _exact_twin(folder: Path, scratch: Path) -> Path:
    """A twin of `folder` whose MatMulNBits run at accuracy_level 0 (fp32 activations: x·Ŵ with the dequantized
    weights, as the reference computes), files linked, model.onnx rewritten; `folder` when nothing changes.
    The shipped graph's int8-activation rounding is the quantization cost, reported apart (as export validation
    does)."""
    from hoe.core.atomic import link_or_copy
    from hoe.export.quantize import exact_accuracy_model

    model = exact_accuracy_model(folder / "model.onnx")
    if model is None:
        return folder
    for item in folder.iterdir():
        if item.name != "model.onnx" and item.is_file():  # onnxruntime refuses external data behind a symlink
            link_or_copy(item, scratch / item.name)
    (scratch / "model.onnx").write_bytes(model)
    return scratch


def _run_parity(cfg: ParityConfig, folder: Path, graph_folder: Path, manifest, base, hoe) -> dict:
    from tqdm import tqdm

    from .machine import machine_info
    from .timing import set_torch_threads

    exact = graph_folder != folder
    dtype = manifest.data["model"].get("dtype", "fp32")
    key = "fp32" if exact else _tolerance_key(manifest.data)
    atol, rtol = TOLERANCES[key] if dtype == "fp32" else TOLERANCES.get(dtype, TOLERANCES["fp32"])
    atol, rtol = cfg.atol if cfg.atol is not None else atol, cfg.rtol if cfg.rtol is not None else rtol
    set_torch_threads(cfg.threads)
    ref = reference_runner(folder, cfg.threads, base, hoe)
    if not ref.router.enabled:
        raise ConfigError(f"{folder} is a plain base export; parity needs the HoE export")
    prefs = preferences(ref.router.n_objectives, cfg.seed)
    cases = sweep(cfg, prefs, manifest.vocab_size)
    runners, skipped = _open_all(cfg, graph_folder)
    result = {"folder": str(folder), "machine": machine_info(), "threads": cfg.threads, "dtype": dtype,
              "parity_graph": "MatMulNBits at accuracy_level 0 (fp32 activations); the shipped graph's int8 "
                              "activations are part of the quantization cost" if exact else "as shipped",
              "tolerances": {"atol": atol, "rtol": rtol}, "config": cfg.to_dict(), "preferences": prefs,
              "reference": ref.backend.describe(), "skipped": skipped, "backends": {}}
    for run in runners:
        result["backends"][run.label] = {"describe": run.backend.describe(), "cases": [], "greedy": []}
    int8_cache = kv_int8.in_manifest(manifest.data)
    for case in tqdm(cases, desc="parity sweep", unit="case"):
        expected = None if int8_cache else ref.forward(case)
        real = case.mask[:, case.past:] > 0  # [B, T]
        for run in runners:
            got = run.forward(case)
            if int8_cache:  # the reference on the backend's own rounded past (export/validate.py says why)
                expected = ref.forward(case, run.past_kv)
            entry = {"batch": case.batch, "new_tokens": case.new_tokens, "past": case.past,
                     "preferences": case.rows, **compare(expected, got, real, atol, rtol)}
            result["backends"][run.label]["cases"].append(entry)
    _greedy_all(cfg, manifest, prefs, ref, runners, result, atol, rtol)
    for run in [ref, *runners]:
        run.backend.deactivate()
    if dtype == "fp32" and cfg.fp64_factor > 0:
        _judge_by_fp64(cfg, graph_folder, cases, result, base, hoe)
    result["quantization"] = manifest.data.get("quantization")
    if cfg.quality:
        result["quantization_cost"] = quantization_cost(folder, cfg.threads, base, hoe)
    return _finish(result)


def _judge_by_fp64(cfg: ParityConfig, folder: Path, cases: list[Case], result: dict, base, hoe) -> None:
    """Failing fp32 cases, again: each backend and torch fp32 against a float64 reference (module docstring)."""
    failing = sorted({i for e in result["backends"].values() for i, c in enumerate(e["cases"]) if not c["passed"]})
    if not failing:
        return
    from hoe.export.fp64_reference import exact_float64

    log.info("parity: %d failing case(s) judged against a float64 reference", len(failing))
    ref32, ref64 = reference_runner(folder, cfg.threads, base, hoe), reference_runner(folder, cfg.threads, base, hoe)
    exact_float64(ref64.backend.model)
    runners = {label: open_runner(label, folder, cfg.threads) for label in result["backends"]}
    for i in failing:
        case = cases[i]
        real = case.mask[:, case.past:] > 0
        exact = ref64.forward(case).astype(np.float64)[real]
        ref_err = float(np.abs(ref32.forward(case)[real] - exact).max())
        for label, entry in result["backends"].items():
            c = entry["cases"][i]
            if c["passed"]:
                continue
            judged = within_fp64(runners[label].forward(case)[real], exact, ref_err, cfg.fp64_factor)
            c["passed"] = judged.pop("passed")
            c["fp64"] = judged
    for run in [ref32, ref64, *runners.values()]:
        run.backend.deactivate()


def _tolerance_key(manifest: dict) -> str:
    """int8-activations when onnxruntime runs the quantized MatMuls with int8 activations: MatMulNBits at an
    accuracy level > 0, or DequantizeLinear+MatMul, which onnxruntime fuses into MatMulNBits at level 4."""
    quant = manifest.get("quantization") or {}
    if quant.get("form") == "DequantizeLinear" or quant.get("form") == "MatMulNBits" and quant.get("accuracy_level"):
        return "int8-activations"
    return "fp32"


def _open_all(cfg: ParityConfig, folder: Path) -> tuple[list[Runner], dict[str, str]]:
    labels = cfg.backends or candidate_labels()
    runners, skipped = [], {}
    for label in labels:
        try:
            runners.append(open_runner(label, folder, cfg.threads))
        except (BackendError, ImportError, RuntimeError) as e:  # absent hardware or library: say why
            skipped[label] = str(e)
            log.warning("parity: skipping %s: %s", label, e)
    if not runners:
        raise BackendError(f"no backend to compare against the reference (tried {labels}: {skipped})")
    return runners, skipped


def _greedy_all(cfg, manifest, prefs, ref, runners, result, atol, rtol) -> None:
    from tqdm import tqdm

    rng = np.random.default_rng(cfg.seed + 1)
    vocab, pad = manifest.vocab_size, manifest.pad_token_id
    shared = kv_int8.in_manifest(manifest.data)  # greedy_on_its_cache says why
    for i in tqdm(range(len(prefs)), desc="greedy agreement", unit="pref"):
        rows = [prefs[(i + r) % len(prefs)] for r in range(len(cfg.greedy_prompts))]
        prompts = [rng.integers(0, vocab, size=n).tolist() for n in cfg.greedy_prompts]
        if not shared:
            ref_run = ref.greedy(prompts, rows, cfg.greedy_tokens, pad)
        for run in runners:
            if shared:
                *ref_run, tokens = greedy_on_its_cache(ref, run, prompts, rows, cfg.greedy_tokens, pad)
            else:
                tokens = run.greedy(prompts, rows, cfg.greedy_tokens, pad)[0]
            ref_tokens, ref_margins, ref_top = ref_run
            entry = {"preferences": rows, "prompt_lengths": list(cfg.greedy_prompts), "on_backend_cache": shared,
                     **agreement(ref_tokens, ref_margins, tokens, ref_top, atol, rtol, every_step=shared)}
            result["backends"][run.label]["greedy"].append(entry)


def _finish(result: dict) -> dict:
    for entry in result["backends"].values():
        cases, greedy = entry["cases"], entry["greedy"]
        entry["max_abs"] = max(c["max_abs"] for c in cases)
        entry["max_rel"] = max(c["max_rel"] for c in cases)
        entry["greedy_agreement"] = float(np.mean([g["agreement"] for g in greedy]))
        entry["passed"] = all(c["passed"] for c in cases) and all(g["passed"] for g in greedy)
    result["passed"] = all(e["passed"] for e in result["backends"].values())
    return result


# ------------------------------------------------------------------------------------------ CLI


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "parity", help="every backend vs the PyTorch reference: shape sweep, preferences, greedy agreement",
        description="Compare every backend available on this machine with the PyTorch reference on an exported "
                    "HoE folder: a shape sweep (batch 1/3, new tokens 1/7, past 0/5/40, left padding) at the "
                    "vertices, the uniform point and an interior preference, plus greedy-token agreement over "
                    "32 tokens. Prints a table; exits 1 when a tolerance is exceeded.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="exported folder (hoe export)")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON here")
    p.add_argument("--base", help="Hugging Face base folder for the reference (default: the export's source.base)")
    p.add_argument("--hoe", help="HoE checkpoint folder for the reference (default: the export's own tensors)")
    p.add_argument("--backends", nargs="+", metavar="LABEL", help="only these, e.g. ort:cpu ort:cuda trt")
    p.add_argument("--threads", type=int, default=1, help="ORT intra-op and torch threads (default 1)")
    p.add_argument("--atol", type=float, help="absolute logit tolerance (default by dtype: fp32 1e-4, fp16 5e-2)")
    p.add_argument("--rtol", type=float, help="relative logit tolerance (default by dtype: fp32 1e-4, fp16 1e-2)")
    p.add_argument("--greedy-tokens", type=int, default=32, help="greedy agreement length (default 32)")
    p.set_defaults(func=_cli)


def _cli(args) -> int:
    from .report import parity_tables, write_json

    cfg = ParityConfig(threads=args.threads, atol=args.atol, rtol=args.rtol, greedy_tokens=args.greedy_tokens,
                       backends=args.backends)
    result = run_parity(args.out_dir, cfg, base=args.base, hoe=args.hoe)
    print(parity_tables(result))
    if args.json:
        write_json(args.json, result)
    return 0 if result["passed"] else 1
