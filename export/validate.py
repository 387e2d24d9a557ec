"""Parity of an exported folder with the PyTorch reference: onnxruntime CPU vs hoe.core's HoEModel.

For each case (a pair of preferences, one per batch row, routed on the host by hoe.core.routing):

    batch 2, left padding ─► prefill (empty past [B,Hkv,0,D]) ─► N decode steps through the KV cache
    torch: HoEModel + DynamicCache          ORT: model.onnx fed by its own present.* outputs

Both are fed the same tokens (PyTorch's greedy choice), so one early difference cannot hide later
ones. Compared are the logits of real (unpadded) positions and the present K/V of real columns;
padded positions are garbage on both sides by design. `max_rel` is max|ort - torch| / max|torch|.

Tolerance: fp32 logits may differ by `tol_fp32` (1e-4) times the logit scale max(1, max|logit|);
fp16 logits by `tol_fp16` (2e-2) times that scale. An fp16 export is compared with the fp32 PyTorch model
(the model it approximates): PyTorch's own fp16 CPU kernels are the less accurate side — on SmolLM2 a
left-padded prefill in torch fp16 is 1.6 off torch fp32 where the fp16 ONNX graph on ORT is 0.17 off.
The scale matters on real models: on SmolLM2-135M with random experts (|logits| up to ~35), PyTorch
itself moves its logits by 2.7e-4 between 1 and 2 CPU threads, so an absolute 1e-4 would be below the
reference's own reproducibility.

fp32 exports are also measured against a float64 PyTorch reference (fp64_reference.py) on the first
`fp64_cases` cases: `fp64.ort_vs_fp64` is how far the export is from the exact result, `fp64.torch_fp32_vs_fp64`
how far the fp32 reference is. On SmolLM2 (|logits| ~35) ORT lands ~7e-4 from float64 and torch fp32
1.6e-4 (1 thread) to 3.9e-4 (2 threads): both are fp32 rounding. The graph itself is exact (the base graph
run in float64 by ORT matches torch float64 to 5e-7); ORT's fp32 MatMuls alone put 3.9e-4 on the logits,
and torch fp32 with its GEMM on an [in,out] weight (the graph's layout) 2.5e-4 — so no fp32 implementation
with an ordinary GEMM meets 1e-4 absolute at this logit scale.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hoe.contract import manifest as mf
from hoe.contract.io_spec import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, ROUTER_MIX
from hoe.core.config import JsonConfig, atomic_write_text
from hoe.core.errors import HoEError
from hoe.core.positions import positions_from_mask
from hoe.core.preference import PreferenceRouter

log = logging.getLogger(__name__)


class ParityError(HoEError):
    """The exported graph does not reproduce the PyTorch reference within tolerance."""


REFERENCE_DTYPE = {"fp16": "fp32"}  # an fp16 export is judged against the fp32 model it approximates


@dataclass
class ValidationConfig(JsonConfig):
    """What the parity check runs."""

    decode_steps: int = 5  # decode steps after the prefill
    prompt_lengths: list[int] = field(default_factory=lambda: [7, 4])  # one row each, left padded
    preferences: list[list[float]] | None = None  # default: vertex, uniform, a skewed interior point
    seed: int = 0
    tol_fp32: float = 1e-4  # fp32: max abs logits diff allowed, times max(1, max |logit|)
    tol_fp16: float = 2e-2  # fp16: the same, times max(1, max |logit|)
    threads: int = 2
    fp64_cases: int = 1  # fp32 exports: cases also run by a float64 PyTorch reference (0: none)
    quality_prompts: int = 8  # quantized exports: held-out prompts of the quality report vs fp32 (0: none)
    quality_tokens: int = 64  # greedy tokens per prompt in the quality report


def default_preferences(m: int) -> list[list[float]]:
    """A vertex, the uniform point, and one skewed interior point (weights ∝ m, m-1, ..., 1)."""
    skew = np.arange(m, 0, -1, dtype=float)
    return [np.eye(m)[0].tolist(), [1.0 / m] * m, (skew / skew.sum()).tolist()]


def validate_export(folder, base_dir, ckpt_dir, config: ValidationConfig | None = None) -> dict:
    """Run the parity check on exported `folder`; write and return validation.json's content."""
    config = config or ValidationConfig()
    folder = Path(folder)
    manifest = mf.load_manifest(folder)
    dtype = manifest["model"]["dtype"]
    quant = manifest.get("quantization")
    ref = _Reference(base_dir, ckpt_dir, REFERENCE_DTYPE.get(dtype, dtype), config.threads, quant)
    ref64 = (_Reference(base_dir, ckpt_dir, "fp64", config.threads, quant)
             if dtype == "fp32" and config.fp64_cases else None)
    ort = _OrtModel(folder, manifest, config.threads, exact=True)
    stats, stats64 = _Stats(), _Stats()
    cases = []
    for i, (mix, prefs) in enumerate(_cases(manifest, config)):
        exact = (ref64, stats64) if ref64 is not None and i < config.fp64_cases else None
        cases.append({"preferences": prefs, "router_mix": None if mix is None else mix.tolist(),
                      **_run_case(ref, ort, mix, manifest, config, stats, exact)})
    report = _report(stats, cases, manifest, config)
    report["not_validated"] += _window_note(base_dir, config)
    if ref64 is not None:
        report["fp64"] = _fp64_report(stats64, min(config.fp64_cases, len(cases)))
    if quant and quant.get("weights", "fp32") != "fp32":
        report["quantization"] = _quant_report(quant, ref, ort, folder, manifest, config)
        if config.quality_prompts:
            from .quality import QualityConfig, quality_report

            report["quality"] = quality_report(folder, base_dir, ckpt_dir, QualityConfig(
                prompts=config.quality_prompts, new_tokens=config.quality_tokens, threads=config.threads))
    atomic_write_text(folder / mf.VALIDATION_FILE, json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    """Per-output max abs / rel diff table (present K/V summarised by their worst layer)."""
    lines = [f"validation ({report['dtype']} vs PyTorch {report.get('reference', report['dtype'])}, "
             f"{report['n_cases']} cases x {report['steps_per_case']} steps): "
             f"{'PASSED' if report['passed'] else 'FAILED'}  max abs logits {report['max_abs_logits']:.3g} "
             f"(tolerance {report['tolerance']:.3g}), greedy agreement {report['argmax_agreement']:.3f}"]
    outputs = report["outputs"]
    groups = {"logits": [LOGITS], "present.*.key": [n for n in outputs if n.endswith(".key")],
              "present.*.value": [n for n in outputs if n.endswith(".value")]}
    for label, names in groups.items():
        if names:
            worst = max(names, key=lambda n: outputs[n]["max_abs"])
            lines.append(f"  {label:<16} max abs {outputs[worst]['max_abs']:.3g}  max rel "
                         f"{max(outputs[n]['max_rel'] for n in names):.3g}  (worst: {worst})")
    if report.get("fp64"):
        f = report["fp64"]
        lines.append(f"  vs float64 PyTorch ({f['cases']} case(s)): max abs logits ORT {f['ort_vs_fp64']:.3g}, "
                     f"torch fp32 {f['torch_fp32_vs_fp64']:.3g} (fp32 rounding of both; see validate.py)")
    for note in report.get("not_validated", []):
        lines.append(f"  not validated: {note}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the two sides


class _Reference:
    """PyTorch side: HoEModel (or the plain base model) in the export's dtype, or "fp64": the fp32 model
    computed in float64 throughout (fp64_reference.py)."""

    def __init__(self, base_dir, ckpt_dir, dtype: str, threads: int, quant: dict | None = None) -> None:
        import torch
        from hoe.core.loading import load_base, load_hoe

        from .quantize import dequantize_reference

        torch.set_num_threads(threads)
        self.hoe = ckpt_dir is not None
        load_dtype = "fp32" if dtype == "fp64" else dtype
        self.model = load_hoe(base_dir, ckpt_dir, load_dtype) if self.hoe else load_base(base_dir, load_dtype)
        self.linears = dequantize_reference(self.model, quant)  # the graph's own (dequantized) base weights
        if quant and quant.get("weights", "fp32") != "fp32" and self.linears != quant.get("linear"):
            raise ParityError(f"the graph quantized {quant.get('linear')} linear weights but the reference has "
                              f"{self.linears} nn.Linear modules: the two sides would not hold the same weights")
        if dtype == "fp64":
            from .fp64_reference import exact_float64

            exact_float64(self.model)
        self.model.eval()

    def step(self, ids, mask, pos, mix, cache):
        """-> logits [B,T,V] float64 numpy, cache, presents (list of [B,Hkv,P+T,D] numpy)."""
        import torch

        args = dict(attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos), cache=cache)
        with torch.no_grad():
            if self.hoe:
                logits, cache = self.model(torch.from_numpy(ids), torch.from_numpy(mix), **args)
            else:
                from hoe.core.model import cache_kwarg, output_cache

                cache_arg = {cache_kwarg(self.model): args.pop("cache")}
                out = self.model(input_ids=torch.from_numpy(ids), use_cache=True, **args, **cache_arg)
                logits, cache = out.logits, output_cache(out)
        presents = [t.float().numpy() for layer in cache.layers for t in (layer.keys, layer.values)]
        return logits.double().numpy(), cache, presents


class _OrtModel:
    """onnxruntime CPU side, fed the experts/routers shipped in the folder.

    `exact`: MatMulNBits nodes run with accuracy_level 0 (fp32 activations), so the graph computes
    x·Ŵ with the dequantized weights Ŵ exactly as the reference does; the shipped accuracy level (int8
    activations at 4) is measured apart (validation.json `quantization.shipped`)."""

    def __init__(self, folder: Path, manifest: dict, threads: int, exact: bool = False) -> None:
        import onnxruntime as ort
        from safetensors.numpy import load_file

        from .quantize import exact_accuracy_model, quantized_form

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = folder / manifest["model"]["file"]
        model = exact_accuracy_model(path) if exact else None
        self.exact_twin = model is not None
        if model is not None:  # in memory; external data read from the folder
            opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(folder))
        if exact:  # onnxruntime fuses DequantizeLinear+MatMul (tensorrt target) into MatMulNBits at level 4
            opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")
            self.exact_twin = self.exact_twin or quantized_form(manifest) == "DequantizeLinear"
        self.session = ort.InferenceSession(model if model is not None else str(path), opts,
                                            providers=["CPUExecutionProvider"])
        self.static = {}
        for key in ("experts", "routers"):
            if manifest["files"].get(key):
                self.static.update(load_file(str(folder / manifest["files"][key])))
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.num_layers = manifest["architecture"]["num_layers"]
        self.past_names = [manifest["kv_cache"][k] % i for i in range(self.num_layers)
                           for k in ("past_key", "past_value")]

    def step(self, ids, mask, pos, mix, past):
        feed = {INPUT_IDS: ids, ATTENTION_MASK: mask, POSITION_IDS: pos, **dict(zip(self.past_names, past)),
                **self.static}
        if mix is not None:
            feed[ROUTER_MIX] = mix
        out = dict(zip(self.output_names, self.session.run(None, feed)))
        return out


# ---------------------------------------------------------------------------- cases and comparison


def _cases(manifest: dict, config: ValidationConfig):
    """(router_mix [2,K] float32 or None, [pref row 0, pref row 1]) per case."""
    hoe = manifest["hoe"]
    if not hoe.get("enabled", True):
        return [(None, None)]
    prefs = config.preferences or default_preferences(len(hoe["objectives"]))
    router, out = PreferenceRouter.from_hoe(hoe), []
    for i, pref in enumerate(prefs):
        pair = [pref, prefs[(i + 1) % len(prefs)]]
        out.append((router.route(pair, 2)[1], pair))  # router_mix [2, K] float32
    return out


def _prompt(manifest: dict, config: ValidationConfig):
    """Left-padded batch: ids [B,T], mask [B,T] (row b has prompt_lengths[b] real tokens)."""
    rng = np.random.default_rng(config.seed)
    lengths = config.prompt_lengths
    t = max(lengths)
    vocab = manifest["architecture"]["vocab_size"]
    ids = rng.integers(0, vocab, size=(len(lengths), t)).astype(np.int64)
    mask = np.zeros((len(lengths), t), dtype=np.int64)
    for row, n in enumerate(lengths):
        mask[row, t - n:] = 1
        ids[row, : t - n] = manifest["tokens"]["pad_token_id"]
    return ids, mask


def _run_case(ref: _Reference, ort: _OrtModel, mix, manifest: dict, config: ValidationConfig, stats,
              exact: tuple | None = None) -> dict:
    """Prefill + decode steps; `exact` = (float64 reference, its _Stats): ORT and torch logits vs float64 too."""
    ids, mask = _prompt(manifest, config)
    b = ids.shape[0]
    kv = manifest["inputs"][manifest["kv_cache"]["past_key"] % 0]
    np_dtype = np.float16 if kv["dtype"] == "float16" else np.float32
    past = [np.zeros((b, kv["shape"][1], 0, kv["shape"][3]), dtype=np_dtype) for _ in ort.past_names]
    cache, cache64, steps, agree = None, None, [], []
    for step in range(config.decode_steps + 1):
        pos = positions_from_mask(mask, ids.shape[1])
        ref_logits, cache, ref_present = ref.step(ids, mask, pos, mix, cache)
        out = ort.step(ids, mask, pos, mix, past)
        real = mask[:, -ids.shape[1]:].astype(bool)  # [B,T] unpadded new positions
        diffs = {LOGITS: stats.add(LOGITS, out[LOGITS][real], ref_logits[real])}
        if exact is not None:
            logits64, cache64, _ = exact[0].step(ids, mask, pos, mix, cache64)
            exact[1].add("ort", out[LOGITS][real], logits64[real])
            exact[1].add("torch_fp32", ref_logits[real], logits64[real])
        for name, ref_t in zip(ort.output_names[1:], ref_present):
            got, want, cols = _held_columns(out[name], ref_t, mask)
            diffs[name] = stats.add(name, got[cols], want[cols])  # [n_real, Hkv, D]
        agree += list(out[LOGITS][:, -1].argmax(-1) == ref_logits[:, -1].argmax(-1))
        steps.append({"step": step, "new_tokens": int(ids.shape[1]), "logits": diffs[LOGITS],
                      "present_max_abs": max((d["max_abs"] for n, d in diffs.items() if n != LOGITS), default=0.0)})
        past = [out[n] for n in ort.output_names[1:]]
        ids = ref_logits[:, -1].argmax(-1)[:, None].astype(np.int64)  # the same next token on both sides
        mask = np.concatenate([mask, np.ones((b, 1), dtype=np.int64)], axis=1)
    stats.agree += agree
    return {"steps": steps, "argmax_agreement": float(np.mean(agree))}


def _held_columns(got: np.ndarray, want: np.ndarray, mask: np.ndarray):
    """The cache columns both sides hold, as ([B,n,Hkv,D], [B,n,Hkv,D], real columns [B,n]).

    A sliding-window layer of the reference keeps only its last n = window-1 columns (transformers'
    DynamicSlidingWindowLayer); the graph's present keeps all P+T, so the last n of them are compared.
    """
    n = want.shape[2]  # got, want: [B,Hkv,P+T,D], [B,Hkv,n,D] with n <= P+T
    return (np.moveaxis(got[:, :, got.shape[2] - n:], 2, 1), np.moveaxis(want, 2, 1),
            mask[:, mask.shape[1] - n:].astype(bool))


class _Stats:
    """Worst max-abs / max-rel diff per output over every comparison."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, float]] = {}
        self.agree: list[bool] = []

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> dict[str, float]:
        got, want = got.astype(np.float64), want.astype(np.float64)
        max_abs = float(np.max(np.abs(got - want))) if got.size else 0.0
        if not np.all(np.isfinite(got)):
            max_abs = float("inf")
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        d = {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}
        old = self.outputs.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "max_ref": 0.0})
        old["max_abs"], old["max_rel"] = max(old["max_abs"], d["max_abs"]), max(old["max_rel"], d["max_rel"])
        old["max_ref"] = max(old["max_ref"], scale)
        return d


def _window_note(base_dir, config: ValidationConfig) -> list[str]:
    """Say so when the validated sequences stay inside a sliding window (its masks then never cut)."""
    from hoe.core.capability import probe_base

    window = probe_base(base_dir).sliding_window
    longest = max(config.prompt_lengths) + config.decode_steps
    if window is None or longest > window:
        return []
    return [f"sliding-window masks: the cases reach {longest} tokens, inside the {window}-token window "
            "(tests/arch runs tiny models past their windows)"]


def _quant_report(quant: dict, ref: _Reference, ort: _OrtModel, folder: Path, manifest: dict,
                  config: ValidationConfig) -> dict:
    """What the parity above compared, and the shipped graph (its own accuracy level) against the same reference."""
    out = {"weights": quant["weights"], "form": quant.get("form"), "reference_linears": ref.linears,
           "reference": "the same PyTorch model with the graph's dequantized base weights",
           "parity_graph": "MatMulNBits at accuracy_level 0 (fp32 activations)" if ort.exact_twin else "as shipped"}
    if not ort.exact_twin:
        return out
    shipped, stats = _OrtModel(folder, manifest, config.threads), _Stats()
    for mix, _ in _cases(manifest, config):
        _run_case(ref, shipped, mix, manifest, config, stats)
    logits = stats.outputs[LOGITS]
    out["shipped"] = {"accuracy_level": quant.get("accuracy_level"), "max_abs_logits": logits["max_abs"],
                      "max_rel_logits": logits["max_rel"], "argmax_agreement": float(np.mean(stats.agree)),
                      "note": "int8 activations inside MatMulNBits (a kernel precision choice, like fp16 "
                              "accumulation on GPUs); quality vs fp32 below covers its cost"}
    return out


def _fp64_report(stats64: _Stats, n_cases: int) -> dict:
    """ORT and the fp32 reference, each against the float64 reference (max abs logits diff)."""
    ort, torch32 = stats64.outputs["ort"], stats64.outputs["torch_fp32"]
    return {"cases": n_cases, "ort_vs_fp64": ort["max_abs"], "torch_fp32_vs_fp64": torch32["max_abs"],
            "ort_vs_fp64_rel": ort["max_rel"], "torch_fp32_vs_fp64_rel": torch32["max_rel"],
            "logit_scale": ort["max_ref"]}


def _report(stats: _Stats, cases: list, manifest: dict, config: ValidationConfig) -> dict:
    dtype = manifest["model"]["dtype"]
    logits = stats.outputs[LOGITS]
    scale = max(1.0, logits["max_ref"])
    measure = logits["max_abs"]
    if dtype == "fp32":
        tolerance, not_validated = config.tol_fp32 * scale, []
    else:
        tolerance = config.tol_fp16 * scale
        not_validated = [
            "fp16 arithmetic of GPU kernels: onnxruntime CPU runs ops that lack fp16 CPU kernels in fp32 "
            "between casts, so GPU/TensorRT fp16 accumulation is not reproduced here",
            "TensorRT engine build and run (TensorRT is not installable on this machine)"]
    return {"passed": bool(np.isfinite(measure) and measure <= tolerance), "dtype": dtype,
            "reference": REFERENCE_DTYPE.get(dtype, dtype),
            "max_abs_logits": logits["max_abs"], "max_rel_logits": logits["max_rel"], "tolerance": tolerance,
            "logit_scale": logits["max_ref"],
            "argmax_agreement": float(np.mean(stats.agree)), "n_cases": len(cases),
            "steps_per_case": config.decode_steps + 1, "batch": len(config.prompt_lengths),
            "prompt_lengths": config.prompt_lengths, "outputs": stats.outputs, "cases": cases,
            "not_validated": not_validated, "config": config.to_dict()}
