"""`hoe bench serve` end to end on the tiny export: every phase's requests and tokens are counted, the table,
JSON and plot come out (speed is measured by the benchmark, never asserted here)."""

import json

from hoe.bench.serving import ServeBenchConfig, plot, run, table
from hoe.cli.cli import main


def test_bench_serve_counts_every_token(llama_folder, tmp_path):
    config = ServeBenchConfig(concurrency=[1, 3], requests=2, new_tokens=5, repeats=1, sweep_repeats=2, max_batch=2)
    result = run(llama_folder, config)
    for c in (1, 3):
        phase = result["phases"][str(c)]
        assert phase["requests"] == 2 * c and phase["tokens"] == 2 * c * 5
        assert phase["ttft_ms"]["n"] == 2 * c and len(phase["tokens_per_s_runs"]) == 2
        assert phase["itl_ms"]["p99"] >= phase["itl_ms"]["p50"] > 0
    assert result["speedup_over_one_stream"]["1"] == 1.0
    assert result["overhead"]["ratio"] > 0 and len(result["overhead"]["server_samples"]) == 1
    assert "| 3 | 6 | 30 |" in table(result)
    assert plot(result, tmp_path / "p.png").stat().st_size > 1000


def test_bench_serve_cli_writes_json(llama_folder, tmp_path, capsys):
    out = tmp_path / "serve.json"
    assert main(["bench", "serve", str(llama_folder), "--concurrency", "2", "--requests", "1", "--new-tokens", "3",
                 "--repeats", "1", "--sweep-repeats", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["phases"]["2"]["tokens"] == 6
    assert "streams" in capsys.readouterr().out
    assert main(["bench", "serve", str(llama_folder), "--concurrency", "a,b"]) == 2
