"""`hoe bench parity` and `hoe bench latency` end to end on a tiny exported HoE model."""

import json
import shutil

import numpy as np
import pytest
from hoe.bench.latency import LatencyConfig, Sources, run_latency
from hoe.bench.parity import ParityConfig, run_parity
from hoe.cli.cli import main

SMALL = dict(batches=[1, 3], new_tokens=[1, 7], past=[0, 5], greedy_tokens=8)


def test_parity_passes_and_reports_every_case(bench_model, tmp_path):
    result = run_parity(bench_model.export, ParityConfig(**SMALL), base=str(bench_model.base_dir))
    assert result["passed"]
    entry = result["backends"]["ort:cpu"]
    assert len(result["preferences"]) == 5
    assert len(entry["cases"]) == 5 * 2 * 2 * 2 and len(entry["greedy"]) == 5
    assert 0 <= entry["max_abs"] < 1e-4 and entry["greedy_agreement"] == 1.0
    assert {c["past"] for c in entry["cases"]} == {0, 5}


@pytest.mark.skipif(__import__("hoe.runtime.kernels", fromlist=["library"]).library() is None,
                    reason="hoe was installed without its kernels library")
def test_parity_of_an_int8_cache_export(bench_model, tmp_path):
    """--kv-cache int8: the torch reference keeps int8 rows too (its infer and its greedy steps), and each case's
    reference runs on the backend's own rounded past; the sweep and the greedy tokens pass."""
    from runtime_export import exported_folder

    folder = exported_folder(bench_model.base_dir, bench_model.ckpt_dir, tmp_path / "int8", attention_kernel=True,
                             kv_cache="int8")
    result = run_parity(folder, ParityConfig(**SMALL), base=str(bench_model.base_dir))
    entry = result["backends"]["ort:cpu"]
    assert result["passed"] and entry["max_abs"] < 1e-4 and entry["greedy_agreement"] == 1.0, entry["max_abs"]
    assert all(g["on_backend_cache"] for g in entry["greedy"])  # the reference on its rows (bench/parity.py)


def _corrupted_export(bench_model, tmp_path):
    """A copy of the export whose expert B factors are 50 % off (hashes refreshed, so it still loads)."""
    from hoe.contract.manifest import refresh_hashes
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "corrupt"
    shutil.copytree(bench_model.export, folder)
    experts = load_file(str(folder / "experts.safetensors"))
    for key in experts:
        if key.endswith(".lora_B.packed"):
            experts[key] = (experts[key] * 1.5).astype(np.float32)
    save_file(experts, str(folder / "experts.safetensors"))
    refresh_hashes(folder)
    return folder


def test_parity_cli_exits_nonzero_past_tolerance(bench_model, tmp_path, capsys):
    folder = _corrupted_export(bench_model, tmp_path)
    out = tmp_path / "parity.json"
    code = main(["bench", "parity", str(folder), "--base", str(bench_model.base_dir), "--hoe",
                 str(bench_model.ckpt_dir), "--json", str(out), "--greedy-tokens", "4"])
    assert code == 1
    assert "FAIL" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert not result["passed"] and result["backends"]["ort:cpu"]["max_abs"] > 1e-4


@pytest.fixture(scope="module")
def latency_cli(bench_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("latency")
    code = main(["bench", "latency", str(bench_model.export), "--base", str(bench_model.base_dir),
                 "--base-export", str(bench_model.base_export), "--quick", "--new-tokens", "6",
                 "--json", str(out / "latency.json"), "--plot", str(out / "latency.png")])
    return code, out


def test_latency_cli_writes_the_documented_json(latency_cli):
    code, out = latency_cli
    assert code == 0
    data = json.loads((out / "latency.json").read_text())
    assert {"machine", "threads", "systems", "ratios", "preference_switch_ms", "floor_ms_per_token"} <= set(data)
    assert data["threads"] == 1 and data["case"] == {"batch": 1, "prompt_tokens": 32, "new_tokens": 6}
    assert set(data["systems"]) == {"hoe-ort", "torch", "base-ort", "mod", "merged"}
    for s in data["systems"].values():
        assert set(s["decode_ms_per_token"]) >= {"median", "p90"}
        assert s["decode_ms_per_token"]["p90"] >= s["decode_ms_per_token"]["median"] > 0
        assert s["ttft_ms"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mb"] >= 0
        assert s["decode_ms_per_token"]["n"] == 2 * 5  # 2 repetitions x 5 decode steps
    assert set(data["ratios"]) >= {"torch_over_hoe", "hoe_over_base", "mod_over_hoe"}
    assert all(isinstance(v, float) and v > 0 for v in data["ratios"].values())
    assert data["systems"]["hoe-ort"]["same_tokens_as_torch"] is True
    sw = data["preference_switch_ms"]
    assert 0 < sw["hoe"] < sw["merged_remerge"]
    assert data["floor_ms_per_token"] > 0 and data["copy_bandwidth_gbs"] > 0 and data["read_bandwidth_gbs"] > 0
    assert data["bytes_per_token"]["mod"] == 3 * data["bytes_per_token"]["hoe-ort"]  # 3 members at the preference
    assert data["bytes_per_token"]["merged"] == data["bytes_per_token"]["base-ort"] < data["bytes_per_token"]["hoe-ort"]
    assert (out / "latency.png").stat().st_size > 1000


def test_latency_table_lists_every_system_and_target(latency_cli):
    from hoe.bench.report import latency_tables

    text = latency_tables(json.loads((latency_cli[1] / "latency.json").read_text()))
    for name in ("hoe-ort", "torch", "base-ort", "mod", "merged"):
        assert f"| {name} |" in text
    assert "| torch_over_hoe |" in text and "preference switch" in text


def test_latency_nests_other_cases(bench_model):
    cfg = LatencyConfig(batches=[1, 2], prompt_lengths=[5], new_tokens=3, repeats=1, systems=["hoe-ort", "base-ort"],
                        switch_repeats=5, bandwidth_mb=8, profile=True, profile_steps=2)
    result = run_latency(Sources(bench_model.export, bench_model.base_export, bench_model.base_dir, None), cfg)
    assert set(result["cases"]) == {"batch1_prompt5", "batch2_prompt5"}
    assert result["systems"] is result["cases"]["batch1_prompt5"]["systems"]
    assert result["ratios"]["torch_over_hoe"] is None and result["ratios"]["hoe_over_base"] > 0
    assert result["preference_switch_ms"]["merged_remerge"] is None
    assert result["preference_switch_ms"]["hoe"] > 0
    hoe, base = result["profile"]["hoe-ort"], result["profile"]["base-ort"]
    assert hoe["steps"] == base["steps"] == 2 and hoe["total_ms"] > 0 and base["total_ms"] > 0
    assert sum(hoe["nodes_per_token"].values()) > sum(base["nodes_per_token"].values())  # the expert mixture
