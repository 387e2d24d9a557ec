"""Reports of the benchmarks: markdown tables (stdout, docs), JSON (atomic), the latency PNG (matplotlib)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hoe.core.atomic import atomic_write_text


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; floats get 3 significant decimals, None becomes '–'."""
    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else (f"{v:.3g}" if abs(v) < 0.01 and v != 0 else f"{v:.2f}")
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value):
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------------------ parity


def parity_tables(result: dict) -> str:
    """Per backend and shape (max over preferences), then greedy agreement per backend."""
    rows = []
    for label, entry in result["backends"].items():
        groups: dict[tuple, list[dict]] = {}
        for c in entry["cases"]:
            groups.setdefault((c["batch"], c["new_tokens"], c["past"]), []).append(c)
        for (b, t, p), cases in sorted(groups.items()):
            judged = [c["fp64"] for c in cases if c.get("fp64")]
            verdict = "ok" if all(c["passed"] for c in cases) else "FAIL"
            if judged:  # passed or failed against the float64 reference (bench/parity.py)
                verdict += " (fp64: " + ", ".join(f"{j['backend_vs_fp64']:.2g} vs torch fp32 "
                                                  f"{j['torch_fp32_vs_fp64']:.2g}" for j in judged) + ")"
            rows.append([label, b, t, p, max(c["max_abs"] for c in cases), max(c["max_rel"] for c in cases), verdict])
    shapes = markdown_table(["backend", "batch", "new tokens", "past", "max abs", "max rel", "within tol"], rows)
    greedy = []
    for label, entry in result["backends"].items():
        firsts = [f for g in entry["greedy"] for f in g["first_divergence"] if f >= 0]
        greedy.append([label, len(entry["greedy"]), f"{100 * entry['greedy_agreement']:.1f}%",
                       min(firsts) if firsts else "none", "ok" if all(g["passed"] for g in entry["greedy"]) else
                       "FAIL"])
    tol = result["tolerances"]
    head = (f"Parity vs PyTorch reference ({result['dtype']}, atol {tol['atol']:g}, rtol {tol['rtol']:g}, "
            f"{len(result['preferences'])} preferences, threads {result['threads']})")
    greedy_table = markdown_table(["backend", "preferences", "greedy agreement", "first divergence", "passed"],
                                  greedy)
    skipped = "".join(f"\nskipped {k}: {v}" for k, v in result.get("skipped", {}).items())
    cost = result.get("quantization_cost")
    quality = "" if not cost else (
        f"\nquantization cost ({cost['weights']} vs {cost['vs']}, {cost['prompts']} held-out prompts x "
        f"{cost['new_tokens']} greedy tokens): greedy agreement {100 * cost['greedy_agreement']:.1f}%, "
        f"token agreement {100 * cost['token_agreement']:.1f}%, teacher-forced top-1 "
        f"{100 * cost['teacher_forced_top1']:.1f}%, mean next-token KL {cost['mean_kl']:.4g} "
        f"(max {cost['max_kl']:.3g})\n")
    return (f"{head}\n\n{shapes}\n\n{greedy_table}\n{skipped}{quality}\n"
            f"result: {'PASS' if result['passed'] else 'FAIL'}\n")


# ------------------------------------------------------------------------------------------ latency


def latency_tables(result: dict) -> str:
    """One table per case, then ratios, switch times and targets."""
    m = result["machine"]
    head = (f"Latency: {m['cpu']}, {m['usable_cores']} usable cores, load average {m['load_average']} -> "
            f"{m.get('load_average_after')}, threads {result['threads']}, preference {result['preference']}, "
            f"{result['config']['new_tokens']} new tokens, {result['config']['repeats']} round-robin repetitions")
    parts = [head]
    for case in result["cases"].values():
        rows = []
        for name, s in case["systems"].items():
            d = s["decode_ms_per_token"]
            rows.append([name, s["ttft_ms"], d["median"], d["p90"], s["tokens_per_s"], s["peak_rss_mb"],
                         s.get("over_floor")])
        parts.append(f"batch {case['batch']}, prompt {case['prompt_tokens']} tokens\n\n" + markdown_table(
            ["system", "TTFT ms", "decode ms/token (median)", "p90", "tokens/s", "peak RSS MB", "× floor"], rows))
        parts.append("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in case["ratios"].items() if v is not None))
        if case.get("paired_ratios"):
            parts.append("paired (median [min, max] of the per-repetition ratios): " + ", ".join(
                f"{k} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]" for k, v in case["paired_ratios"].items()))
    sw = result["preference_switch_ms"]
    hoe_mb = result["bytes_per_token"].get("hoe-ort", 0) / 1e6
    parts.append(f"floor: {result['floor_ms_per_token']:.2f} ms/token (hoe weights {hoe_mb:.0f} MB read per token "
                 f"/ {result['read_bandwidth_gbs']:.1f} GB/s read bandwidth; copy bandwidth "
                 f"{result['copy_bandwidth_gbs']:.1f} GB/s)")
    hoe = f"{sw['hoe']:.4f} ms" if sw["hoe"] is not None else "–"
    merged = f"{sw['merged_remerge']:.0f} ms" if sw["merged_remerge"] is not None else "–"
    parts.append(f"preference switch: hoe {hoe}, merged re-merge {merged}")
    if result.get("long_over_short_by_system"):
        parts.append("decode past the long prompt / past the short one: " + ", ".join(
            f"{k} {v:.2f}" for k, v in result["long_over_short_by_system"].items()))
    if result.get("paired_long_over_short_by_system"):
        parts.append("the same, paired (median [min, max] of the per-repetition ratios): " + ", ".join(
            f"{k} {v['median']:.2f} [{v['min']:.2f}, {v['max']:.2f}]"
            for k, v in result["paired_long_over_short_by_system"].items()))
    if result.get("steady_long_over_short_by_system"):
        parts.append("the same, steady (the two contexts' decode steps alternating after both prefills; long / short "
                     "ms): " + ", ".join(f"{k} {v['ratio']:.2f} ({v['long_ms']:.2f} / {v['short_ms']:.2f})"
                                         for k, v in result["steady_long_over_short_by_system"].items()))
    if result.get("torch_compile_ms"):
        parts.append("torch-compile, first call per shape (compile, untimed): " + ", ".join(
            f"{k} {v / 1e3:.1f} s" for k, v in result["torch_compile_ms"].items()))
    rows = [[name, t["target"], t["value"], {True: "yes", False: "NO", None: "–"}[t["met"]]]
            for name, t in result["targets"].items()]
    parts.append(markdown_table(["target (batch 1, prompt 32)", "wanted", "measured", "met"], rows))
    if result.get("profile"):
        parts.append(profile_table(result["profile"]))
    return "\n\n".join(parts) + "\n"


def profile_table(profile: dict, top: int = 12) -> str:
    """Decode ms/token per op type, hoe-ort next to base-ort (ORT profiler, batch 1)."""
    names = list(profile)
    ops = sorted({op for p in profile.values() for op in p["ms_per_token"]},
                 key=lambda op: -max(p["ms_per_token"].get(op, 0.0) for p in profile.values()))[:top]
    def cells(op: str) -> list:
        return [x for n in names for x in (profile[n]["ms_per_token"].get(op), profile[n]["nodes_per_token"].get(op))]

    rows = [[op, *cells(op)] for op in ops]
    rows.append(["total (kernels)"] + [x for n in names for x in (profile[n]["total_ms"],
                                                                  sum(profile[n]["nodes_per_token"].values()))])
    headers = ["op type"] + [h for n in names for h in (f"{n} ms/token", f"{n} nodes")]
    return "ORT profile of one decode step (batch 1)\n\n" + markdown_table(headers, rows)


def latency_plot(result: dict, path: str | Path) -> Path:
    """Decode ms/token (median bar, p90 whisker) per system and case, with the bandwidth floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(result["cases"].values())
    fig, axes = plt.subplots(1, len(cases), figsize=(4.2 * len(cases), 3.8), squeeze=False)
    for ax, case in zip(axes[0], cases):
        names = list(case["systems"])
        med = [case["systems"][n]["decode_ms_per_token"]["median"] for n in names]
        p90 = [case["systems"][n]["decode_ms_per_token"]["p90"] for n in names]
        ax.bar(names, med, color=["#2a7ab9" if n == "hoe-ort" else "#9aa5b1" for n in names])
        ax.errorbar(names, med, yerr=[[0] * len(med), [max(0.0, p - m) for p, m in zip(p90, med)]], fmt="none",
                    ecolor="black", capsize=3)
        ax.axhline(result["floor_ms_per_token"], color="#c0392b", linestyle="--", linewidth=1, label="bandwidth floor")
        ax.set_title(f"batch {case['batch']}, prompt {case['prompt_tokens']}")
        ax.set_ylabel("decode ms/token (median, p90)")
        ax.tick_params(axis="x", rotation=30)
        ax.legend(fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{m['cpu']} — {result['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path) -> Path:
    """Write a matplotlib figure as PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
