"""`hoe bench parity` on what we ship: the embedded SmolLM2 HoE export (`make demo`'s, built once and cached).

Runs the command exactly as a user does (default sweep, 32 greedy tokens) and needs it to pass; the one
ill-conditioned prefill case is settled against the float64 reference (bench/parity.py docstring).
"""

import json

import pytest
from hoe.cli.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_export():
    from hoe.cli.demo import DemoConfig, cached_export, resolve

    base, ckpt, root = resolve(DemoConfig())
    return cached_export(base, ckpt, root)


def test_bench_parity_passes_on_the_embedded_export(embedded_export, tmp_path, capsys):
    out = tmp_path / "parity.json"
    code = main(["bench", "parity", str(embedded_export), "--backends", "ort:cpu", "--json", str(out)])
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert code == 0, table
    entry = result["backends"]["ort:cpu"]
    assert entry["greedy_agreement"] == 1.0
    assert all(c["passed"] for c in entry["cases"]) and all(g["passed"] for g in entry["greedy"])
    for case in entry["cases"]:
        if "fp64" in case:  # judged against float64: the backend is as close to exact as torch fp32 is
            f = case["fp64"]
            assert f["backend_vs_fp64"] <= f["factor"] * f["torch_fp32_vs_fp64"]
