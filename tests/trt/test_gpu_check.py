"""bench/gpu_check.py on the CPU with a tiny model: every section runs, the JSON is complete and honest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_gpu_check_tiny_cpu(tmp_path, capsys):
    from hoe.bench import gpu_check

    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--out", str(out), "--device", "cpu", "--quick", "--tiny", "--threads", "1",
                           "--steps", "3", "--warmup", "1"]) == 0
    data = json.loads(out.read_text())
    assert data["errors"] == {}, data["errors"]
    s = data["sections"]
    assert {"system", "packages", "gpu", "onnxruntime", "tensorrt", "cuda_memory", "latency", "ort_mixing"} <= set(s)
    lat = s["latency"]
    assert "random" in lat["model"]["weights"] and lat["model"]["rope_theta"] == 1e5
    assert lat["cache_check"]["ok"] and lat["cache_check"]["max_abs_diff_decode_vs_full"] < 1e-4
    keys = {(r["dtype"], r["batch"], r["model"]) for r in lat["results"] if "median_ms" in r}
    assert keys == {(d, b, m) for d in ("fp32", "fp16") for b in (1, 4) for m in ("base", "hoe")}
    assert all(r["p90_ms"] >= r["median_ms"] > 0 for r in lat["results"])
    assert len(lat["ratios"]) == 4
    mixing = s["ort_mixing"]
    assert mixing["cpu"]["max_abs_diff_vs_numpy"] < 1e-4 and mixing["cpu"]["node_placement"]
    if "CUDAExecutionProvider" not in s["onnxruntime"]["available_providers"]:
        assert "CUDAExecutionProvider" in mixing["requested_cuda"]["fallback"]
    assert "HoE / base" in capsys.readouterr().out


def test_gpu_check_runs_from_a_copied_repo_without_install(tmp_path):
    """As on the GPU machine: `python bench/gpu_check.py` with hoe not installed (the repository shim)."""
    code = (
        "import sys, runpy\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
        "sys.path[:] = [p for p in sys.path if '__editable__' not in p]\n"
        f"sys.argv = ['gpu_check.py', '--out', {str(tmp_path / 'g.json')!r}, '--device', 'cpu', '--quick',\n"
        "            '--tiny', '--batches', '1', '--dtypes', 'fp32', '--steps', '2', '--warmup', '0']\n"
        f"sys.path.insert(0, {str(REPO / 'bench')!r})\n"
        f"runpy.run_path({str(REPO / 'bench' / 'gpu_check.py')!r}, run_name='__main__')\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path,
                   timeout=300)
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["sections"]["import"].startswith("repository shim"), data["sections"]["import"]
    assert data["errors"] == {} and data["sections"]["latency"]["results"][0]["median_ms"] > 0
