"""Parity: the one comparator of a graph's runners against a reference, in Polygraphy's shape.

    runner      reset(batch), then run(ids, mask, pos, mix) -> outputs by graph name, on its own KV cache.
                FeedRunner makes one of any graph-shaped runner (`infer(feed) -> outputs`): the runtime's
                backends (onnxruntime, TensorRT, the PyTorch reference; `hoe bench parity`) and export
                validation's onnxruntime session; each feeds its own present K/V back as its next past.
                Export validation's PyTorch (and float64) reference implements reset/run itself.
    Comparator  runs every runner on the same inputs (`step`, one forward each) -> outputs per runner
    compare     max_abs / max_rel of outputs against the reference (`diff`, `Stats` keeps the worst per output)
    rules       Tolerance: |out - ref| <= atol + rtol · max(min_scale, max|ref|) — the case's logit scale, since
                fp32 rounding grows with the scale of the activations, not with each logit
                within_fp64: a failing fp32 case passes when the runner is within `factor` times the fp32
                reference's own distance to a float64 reference on that input (bench/parity.py says why)
                agreement: greedy tokens agree, or first depart at a near-tie of the reference
    check       raises ParityError when a judgement failed

Export validation (export/validate.py, validation.json) and `hoe bench parity` (bench/parity.py) both use
it. It lives in the contract because validation.json's numbers are what an exported folder promises, and
because export and the runtime never import each other: this module is numpy-only and imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hoe.core.errors import ParityError

from .io_spec import ATTENTION_MASK, INPUT_IDS, LOGITS, POSITION_IDS, ROUTER_MIX


@dataclass(frozen=True)
class Tolerance:
    """Allowed |out - ref|: atol + rtol · max(min_scale, scale), scale = max |ref| of what is compared."""

    atol: float
    rtol: float
    min_scale: float = 0.0

    def bound(self, scale: float) -> float:
        return self.atol + self.rtol * max(self.min_scale, scale)

    def passed(self, max_abs: float, scale: float) -> bool:
        return bool(np.isfinite(max_abs) and max_abs <= self.bound(scale))


def diff(got: np.ndarray, want: np.ndarray) -> dict[str, float]:
    """max_abs, max_rel (= max_abs / max|want|) and scale (max|want|) of got vs want; max_abs is inf when got
    holds a NaN or inf."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    max_abs = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not np.all(np.isfinite(got)):
        max_abs = float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs, "scale": scale}


def compare(ref: np.ndarray, out: np.ndarray, real: np.ndarray, atol: float, rtol: float) -> dict:
    """ref/out: [B, T, V]; real: [B, T] bool (positions to compare) -> max_abs, max_rel, passed
    (Tolerance(atol, rtol) at the compared logits' scale)."""
    d = diff(out[real], ref[real])  # [N, V]
    passed = Tolerance(atol, rtol).passed(d["max_abs"], d["scale"])
    return {"max_abs": d["max_abs"], "max_rel": d["max_rel"], "passed": passed}


class Stats:
    """Worst max-abs / max-rel diff (and the largest reference value, `max_ref`) per output over every
    comparison, plus the greedy agreement of every compared step."""

    def __init__(self) -> None:
        self.outputs: dict[str, dict[str, float]] = {}
        self.agree: list[bool] = []
        self.kv_steps_apart = 0  # int8 KV caches: the most the two sides' rows differ, in rounding steps

    def add(self, name: str, got: np.ndarray, want: np.ndarray) -> dict[str, float]:
        d = diff(got, want)
        scale = d.pop("scale")
        old = self.outputs.setdefault(name, {"max_abs": 0.0, "max_rel": 0.0, "max_ref": 0.0})
        old["max_abs"], old["max_rel"] = max(old["max_abs"], d["max_abs"]), max(old["max_rel"], d["max_rel"])
        old["max_ref"] = max(old["max_ref"], scale)
        return d


def within_fp64(out: np.ndarray, exact: np.ndarray, reference_error: float, factor: float) -> dict:
    """The float64 rule of fp32 cases: `out` passes when finite and within `factor` times the fp32 reference's
    own distance to float64 (`reference_error`). out, exact: the compared logits [N, V]."""
    err = float(np.abs(out - exact).max())
    return {"backend_vs_fp64": err, "torch_fp32_vs_fp64": reference_error, "factor": factor,
            "passed": bool(np.isfinite(out).all()) and err <= factor * reference_error}


def agreement(ref_tokens, ref_margins, tokens, ref_top, atol: float, rtol: float, every_step: bool = False) -> dict:
    """Greedy agreement of one runner with the reference: it passes when every row agrees, or first departs
    where the reference's top-1 minus top-2 margin is <= 2·atol + rtol·|top-1| (a near-tie). every_step (the
    reference led, each step on the runner's own cache): every differing step must be a near-tie.
    ref_tokens, tokens, ref_margins, ref_top: [B, n]."""
    equal = ref_tokens == tokens  # [B, n]
    tie = ref_margins <= 2 * atol + rtol * np.abs(ref_top)  # [B, n]
    first = [int(np.argmin(row)) if not row.all() else -1 for row in equal]
    if every_step:
        passed = bool((equal | tie).all())
    else:
        passed = all(f < 0 or bool(tie[b, f]) for b, f in enumerate(first))
    return {"agreement": float(equal.mean()), "first_divergence": first,
            "margin_at_divergence": [None if f < 0 else float(ref_margins[b, f]) for b, f in enumerate(first)],
            "passed": passed}


def check(passed: bool, message: str) -> None:
    """Raise ParityError(message) unless `passed`."""
    if not passed:
        raise ParityError(message)


class FeedRunner:
    """A graph-shaped runner (`infer(feed) -> outputs by graph name`) on its own KV cache.

    kv_names: per layer (past key, past value, present key, present value) graph names;
    kv_spec: (dtype name, kv heads, head dim) of the empty cache a reset starts from.
    """

    def __init__(self, infer, kv_names: list[tuple[str, str, str, str]], kv_spec: tuple[str, int, int]) -> None:
        self.infer, self.kv_names = infer, kv_names
        dtype, self.kv_heads, self.head_dim = kv_spec
        self.kv_dtype = {"float16": np.float16, "fp16": np.float16, "int8": np.int8}.get(dtype, np.float32)
        self.past: dict[str, np.ndarray] = {}

    @property
    def present_names(self) -> list[str]:
        return [n for _, _, pk, pv in self.kv_names for n in (pk, pv)]

    def reset(self, batch: int) -> None:
        empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.kv_dtype)  # [B, Hkv, 0, D]
        self.past = {n: empty for pk, pv, _, _ in self.kv_names for n in (pk, pv)}

    def run(self, ids, mask, pos, mix) -> dict[str, np.ndarray]:
        """ids [B, T], mask [B, P+T], pos [B, T], mix [B, K] or None -> outputs; the presents become the past."""
        feed = {INPUT_IDS: np.ascontiguousarray(ids), ATTENTION_MASK: np.ascontiguousarray(mask),
                POSITION_IDS: np.ascontiguousarray(pos), **self.past}
        if mix is not None:
            feed[ROUTER_MIX] = mix
        out = self.infer(feed)
        self.past = {p: out[c] for pk, pv, ck, cv in self.kv_names for p, c in ((pk, ck), (pv, cv))}
        return out


class Comparator:
    """Every runner on the same inputs, each on its own KV cache (Polygraphy's Comparator.run, one feed at a
    time: callers that decode choose the next feed from the reference's outputs)."""

    def __init__(self, runners: dict) -> None:
        self.runners = runners  # label -> runner; the reference first

    def reset(self, batch: int) -> None:
        for runner in self.runners.values():
            runner.reset(batch)

    def step(self, ids, mask, pos, mix) -> dict[str, dict[str, np.ndarray]]:
        """-> outputs per runner label (logits [B, T, V], present.* [B, Hkv, P+T, D])."""
        return {label: runner.run(ids, mask, pos, mix) for label, runner in self.runners.items()}


__all__ = ["LOGITS", "Comparator", "FeedRunner", "ParityError", "Stats", "Tolerance", "agreement", "check",
           "compare", "diff", "within_fp64"]
