"""Reports of the benchmarks: markdown tables (stdout, docs), JSON (atomic), the latency PNG (matplotlib)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hoe.core.config import atomic_write_text


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
            rows.append([label, b, t, p, max(c["max_abs"] for c in cases), max(c["max_rel"] for c in cases),
                         "ok" if all(c["passed"] for c in cases) else "FAIL"])
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
    return f"{head}\n\n{shapes}\n\n{greedy_table}\n{skipped}\nresult: {'PASS' if result['passed'] else 'FAIL'}\n"
