"""Parity of an exported folder with the PyTorch reference: onnxruntime CPU vs hoe.core's HoEModel.

For each case (a pair of preferences, one per batch row, routed on the host by hoe.core.preference), through
the comparator of `hoe bench parity` (hoe.contract.parity: runners on their own KV caches, Stats, Tolerance):

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
from hoe.contract import kv_int8
from hoe.contract import manifest as mf
from hoe.contract.folder import Manifest
from hoe.contract.io_spec import LOGITS
from hoe.contract.parity import Comparator, FeedRunner, Stats, Tolerance, check
from hoe.core.atomic import atomic_write_text
from hoe.core.config import JsonConfig
from hoe.core.errors import ParityError
from hoe.core.positions import positions_from_mask
from hoe.core.preference import PreferenceRouter
from hoe.runtime import kernels

log = logging.getLogger(__name__)

__all__ = ["ParityError", "ValidationConfig", "check_report", "default_preferences", "format_report",
           "validate_export"]

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
    ref = _Reference(base_dir, ckpt_dir, manifest, REFERENCE_DTYPE.get(dtype, dtype), config.threads, quant)
    ref64 = (_Reference(base_dir, ckpt_dir, manifest, "fp64", config.threads, quant)
             if dtype == "fp32" and config.fp64_cases else None)
    ort = _OrtModel(folder, manifest, config.threads, exact=True)
    stats, stats64 = Stats(), Stats()
    cases = []
    for i, (mix, prefs) in enumerate(_cases(manifest, config)):
        exact = (ref64, stats64) if ref64 is not None and i < config.fp64_cases else None
        cases.append({"preferences": prefs, "router_mix": None if mix is None else mix.tolist(),
                      **_run_case(ref, ort, mix, manifest, config, stats, exact)})
    report = _report(stats, cases, manifest, config)
    report["not_validated"] += _window_note(base_dir, config)
    if ref64 is not None:
        report["fp64"] = _fp64_report(stats64, min(config.fp64_cases, len(cases)))
    if kv_int8.in_manifest(manifest) or quant and (quant.get("weights", "fp32") != "fp32" or mf.experts_baked(quant)):
        report["quantization"] = _quant_report(quant, ref, ort, folder, manifest, config)
        if config.quality_prompts:
            from .quality import QualityConfig, quality_report

            report["quality"] = quality_report(folder, base_dir, ckpt_dir, QualityConfig(
                prompts=config.quality_prompts, new_tokens=config.quality_tokens, threads=config.threads))
    atomic_write_text(folder / mf.VALIDATION_FILE, json.dumps(report, indent=2) + "\n")
    return report


def check_report(report: dict) -> None:
    """ParityError unless the validation `report` passed."""
    if report["max_abs_logits"] <= report["tolerance"]:  # then the int8 cache's check is what failed
        reason = (f"the int8 KV cache's rows are {(report.get('kv_cache') or {}).get('max_steps_apart')} rounding "
                  "steps apart from the reference's (expected at most 1)")
    else:
        reason = f"max abs logits diff {report['max_abs_logits']:.3g} > tolerance {report['tolerance']:.3g}"
    check(report["passed"], reason)


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
    """PyTorch side, a parity runner (hoe.contract.parity): HoEModel (or the plain base model) in the export's
    dtype, or "fp64": the fp32 model computed in float64 throughout (fp64_reference.py). It keeps its own
    transformers cache between runs."""

    def __init__(self, base_dir, ckpt_dir, manifest: dict, dtype: str, threads: int, quant: dict | None = None,
                 float_cache: bool = False) -> None:
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
        self.present_names = _kv_runner_args(manifest)[0]
        self.int8_cache = not float_cache and kv_int8.in_manifest(manifest)  # float_cache: the unrounded model
        self.cache = None  # a transformers cache; for an int8 cache the rows [B,Hkv,P,D+4] per present name

    def reset(self, batch: int) -> None:
        self.cache = None

    def adopt(self, presents: dict[str, np.ndarray]) -> None:
        """Continue from the graph's own int8 cache (`presents` by graph name): both sides then attend the same
        rounded past, so a value the two sides' fp32 rounding put on opposite sides of a rounding boundary (one
        step apart, checked by the caller) does not move every later logit."""
        self.cache = [presents[n] for n in self.present_names]

    def run(self, ids, mask, pos, mix) -> dict[str, np.ndarray]:
        """-> logits [B,T,V] float64 and the presents [B,Hkv,P+T,D] float32 (int8 rows for an int8 cache) by
        graph name."""
        if self.int8_cache:
            return self._run_int8(ids, mask, pos, mix)
        logits, self.cache = self._forward(ids, mask, pos, mix, self.cache)
        presents = [t.float().numpy() for layer in self.cache.layers for t in (layer.keys, layer.values)]
        return {LOGITS: logits.double().numpy(), **dict(zip(self.present_names, presents))}

    def _run_int8(self, ids, mask, pos, mix) -> dict[str, np.ndarray]:
        """The model on the dequantized past (a step's own tokens exact), its new columns quantized onto the past's
        rows: what the AttentionInt8 op computes (hoe.contract.kv_int8)."""
        import torch
        from transformers import DynamicCache

        past = self.cache
        cache = None
        if past is not None and past[0].shape[2] > 0:
            dtype = next(self.model.parameters()).dtype
            floats = [torch.from_numpy(kv_int8.dequantize(rows)).to(dtype) for rows in past]
            cache = DynamicCache(list(zip(floats[0::2], floats[1::2])), config=self.model.model.config)
        logits, cache = self._forward(ids, mask, pos, mix, cache)
        floats = [t.float().numpy() for layer in cache.layers for t in (layer.keys, layer.values)]
        if past is None:
            past = [np.zeros((*f.shape[:2], 0, kv_int8.row_width(f.shape[3])), np.int8) for f in floats]
        self.cache = [kv_int8.append(rows, f, ids.shape[1]) for rows, f in zip(past, floats)]
        return {LOGITS: logits.double().numpy(), **dict(zip(self.present_names, self.cache))}

    def _forward(self, ids, mask, pos, mix, cache):
        """(logits [B,T,V], the transformers cache after the step)."""
        import torch
        from hoe.core.model import cache_kwarg, output_cache

        args = dict(attention_mask=torch.from_numpy(mask), position_ids=torch.from_numpy(pos))
        with torch.no_grad():
            if self.hoe:
                return self.model(torch.from_numpy(ids), torch.from_numpy(mix), **args, cache=cache)
            cache_arg = {cache_kwarg(self.model): cache}
            out = self.model(input_ids=torch.from_numpy(ids), use_cache=True, **args, **cache_arg)
            return out.logits, output_cache(out)


class _OrtModel(FeedRunner):
    """onnxruntime CPU side, fed the experts/routers shipped in the folder; a parity runner on its own KV cache.

    `exact`: MatMulNBits nodes run with accuracy_level 0 (fp32 activations), so the graph computes
    x·Ŵ with the dequantized weights Ŵ exactly as the reference does; the shipped accuracy level (int8
    activations at 4) is measured apart (validation.json `quantization.shipped`)."""

    def __init__(self, folder: Path, manifest: dict, threads: int, exact: bool = False) -> None:
        import onnxruntime as ort

        from .quantize import exact_accuracy_model, quantized_form

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        kernels.register(opts, manifest)
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
        self.static = Manifest(folder, manifest).hoe_tensors()  # the expert/router inputs ({} when baked in)
        self.output_names = [o.name for o in self.session.get_outputs()]
        super().__init__(self._infer, *_kv_runner_args(manifest)[1:])

    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(None, {**feed, **self.static})))


def _kv_runner_args(manifest: dict):
    """(present names in graph order, per-layer KV names, KV spec) of an exported folder's manifest dict."""
    view = Manifest(Path("."), manifest)
    kv_names = [view.kv_names(i) for i in range(view.num_layers)]
    return [n for _, _, pk, pv in kv_names for n in (pk, pv)], kv_names, view.kv_spec()


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


def _run_case(ref: _Reference, ort: _OrtModel, mix, manifest: dict, config: ValidationConfig, stats: Stats,
              exact: tuple | None = None) -> dict:
    """Prefill + decode steps; `exact` = (float64 reference, its Stats): ORT and torch logits vs float64 too."""
    ids, mask = _prompt(manifest, config)
    b = ids.shape[0]
    comparator = Comparator({"torch": ref, "ort": ort} | ({"fp64": exact[0]} if exact is not None else {}))
    comparator.reset(b)
    steps, agree = [], []
    for step in range(config.decode_steps + 1):
        pos = positions_from_mask(mask, ids.shape[1])
        outs = comparator.step(ids, mask, pos, mix)
        want, got = outs["torch"], outs["ort"]
        real = mask[:, -ids.shape[1]:].astype(bool)  # [B,T] unpadded new positions
        diffs = {LOGITS: stats.add(LOGITS, got[LOGITS][real], want[LOGITS][real])}
        if exact is not None:
            exact[1].add("ort", got[LOGITS][real], outs["fp64"][LOGITS][real])
            exact[1].add("torch_fp32", want[LOGITS][real], outs["fp64"][LOGITS][real])
        for name in ort.present_names:
            held, ref_t, cols = _held_columns(got[name], want[name], mask)
            held, ref_t = held[cols], ref_t[cols]  # [n_real, Hkv, D] (int8 rows: D + 4)
            if ref.int8_cache:  # the same rounding of (nearly) the same values: at most one step apart
                stats.kv_steps_apart = max(stats.kv_steps_apart, kv_int8.steps_apart(held, ref_t))
            diffs[name] = stats.add(name, kv_int8.as_float(held), kv_int8.as_float(ref_t))
        agree += list(got[LOGITS][:, -1].argmax(-1) == want[LOGITS][:, -1].argmax(-1))
        steps.append({"step": step, "new_tokens": int(ids.shape[1]), "logits": diffs[LOGITS],
                      "present_max_abs": max((d["max_abs"] for n, d in diffs.items() if n != LOGITS), default=0.0)})
        if ref.int8_cache:
            for runner in [ref] + ([exact[0]] if exact is not None else []):
                runner.adopt(got)
        ids = want[LOGITS][:, -1].argmax(-1)[:, None].astype(np.int64)  # the same next token on both sides
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
    shipped, stats = _OrtModel(folder, manifest, config.threads), Stats()
    for mix, _ in _cases(manifest, config):
        _run_case(ref, shipped, mix, manifest, config, stats)
    logits = stats.outputs[LOGITS]
    out["shipped"] = {"accuracy_level": quant.get("accuracy_level"), "max_abs_logits": logits["max_abs"],
                      "max_rel_logits": logits["max_rel"], "argmax_agreement": float(np.mean(stats.agree)),
                      "note": "int8 activations inside MatMulNBits (a kernel precision choice, like fp16 "
                              "accumulation on GPUs); quality vs fp32 below covers its cost"}
    return out


def _fp64_report(stats64: Stats, n_cases: int) -> dict:
    """ORT and the fp32 reference, each against the float64 reference (max abs logits diff)."""
    ort, torch32 = stats64.outputs["ort"], stats64.outputs["torch_fp32"]
    return {"cases": n_cases, "ort_vs_fp64": ort["max_abs"], "torch_fp32_vs_fp64": torch32["max_abs"],
            "ort_vs_fp64_rel": ort["max_rel"], "torch_fp32_vs_fp64_rel": torch32["max_rel"],
            "logit_scale": ort["max_ref"]}


def _report(stats: Stats, cases: list, manifest: dict, config: ValidationConfig) -> dict:
    dtype = manifest["model"]["dtype"]
    logits = stats.outputs[LOGITS]
    rule = Tolerance(0.0, config.tol_fp32 if dtype == "fp32" else config.tol_fp16, min_scale=1.0)
    not_validated = []
    if dtype != "fp32":
        not_validated = [
            "fp16 arithmetic of GPU kernels: onnxruntime CPU runs ops that lack fp16 CPU kernels in fp32 "
            "between casts, so GPU/TensorRT fp16 accumulation is not reproduced here",
            "TensorRT engine build and run (TensorRT is not installable on this machine)"]
    kv = _kv_report(stats, manifest)
    return {"passed": rule.passed(logits["max_abs"], logits["max_ref"]) and kv.get("passed", True), "dtype": dtype,
            "reference": REFERENCE_DTYPE.get(dtype, dtype),
            "max_abs_logits": logits["max_abs"], "max_rel_logits": logits["max_rel"],
            "tolerance": rule.bound(logits["max_ref"]),
            "logit_scale": logits["max_ref"],
            "argmax_agreement": float(np.mean(stats.agree)), "n_cases": len(cases),
            "steps_per_case": config.decode_steps + 1, "batch": len(config.prompt_lengths),
            "prompt_lengths": config.prompt_lengths, "outputs": stats.outputs, "cases": cases,
            "not_validated": not_validated, "config": config.to_dict(), **({"kv_cache": kv} if kv else {})}


def _kv_report(stats: Stats, manifest: dict) -> dict:
    """An int8 KV cache: how far the graph's rows are from the reference's own rounding (at most one step where the
    two sides' fp32 values straddle a rounding boundary); {} for a float cache."""
    if not kv_int8.in_manifest(manifest):
        return {}
    return {"dtype": kv_int8.DTYPE, "max_steps_apart": stats.kv_steps_apart, "passed": stats.kv_steps_apart <= 1,
            "rule": "each side rounds its own k/v (at most 1 step apart); each step the reference then continues "
                    "from the graph's rows, so the logits compare the same rounded past"}
