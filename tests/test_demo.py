"""Smoke test of `hoe demo` on a tiny chat model: cached export, three preferences, scores, speed line."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "train"))
from hoe.cli.demo import DemoConfig, cached_export, default_exporter, run_demo  # noqa: E402
from hoe.contract.manifest import FORMAT_VERSION, GRAPH_REVISION  # noqa: E402
from hoe.core.errors import HoEError  # noqa: E402
from tiny_chat import tiny_chat_hoe  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    base_dir, ckpt_dir = tiny_chat_hoe(tmp)
    return tmp, base_dir, ckpt_dir


def test_demo_prints_answers_scores_and_speed(tiny):
    tmp, base_dir, ckpt_dir = tiny
    calls = []

    def exporter(base, ckpt, out):  # the demo's own export (baked experts, Mixture kernel), counted
        calls.append(out)
        return default_exporter(base, ckpt, out)

    cfg = DemoConfig(prompt="tell me about cats", max_new_tokens=6, checkpoint=str(ckpt_dir), base=str(base_dir),
                     export_root=str(tmp / "exports"), speed_tokens=4)
    lines = []
    got = run_demo(cfg, exporter=exporter, echo=lines.append)
    assert len(got["answers"]) == 3 and len(calls) == 1
    quant = json.loads((Path(got["export"]) / "hoe_config.json").read_text())["quantization"]
    assert quant["experts"]["storage"] == "baked" and quant["experts"]["kernel"] == "hoe.ort.Mixture", quant
    kv = json.loads((Path(got["export"]) / "hoe_config.json").read_text())["kv_cache"]
    assert kv["kernel"] == "hoe.ort.Attention", kv
    for a in got["answers"]:
        assert set(a["scores"]) == {"char:a", "char:e", "concise"}
        assert all(0.0 <= v <= 1.0 for v in a["scores"].values())
    text = "\n".join(lines)
    assert "decode speed" in text and "ms/token" in text and text.count("preference [") == 3
    assert got["speed"]["runtime_ms_per_token"] > 0 and got["speed"]["torch_ms_per_token"] > 0
    assert got["speed"]["same_tokens"] is True
    run_demo(cfg, exporter=exporter, echo=lines.append)  # second run: the export is reused
    assert len(calls) == 1


def test_export_cache_key_follows_checkpoint_content(tiny, tmp_path):
    tmp, base_dir, ckpt_dir = tiny
    made = []

    def fake(base, ckpt, out, version=FORMAT_VERSION):
        out.mkdir()
        manifest = {"format_version": version, "model": {"graph_revision": GRAPH_REVISION}}
        (out / "hoe_config.json").write_text(json.dumps(manifest))
        made.append(out)

    first = cached_export(base_dir, ckpt_dir, tmp_path, fake)
    assert cached_export(base_dir, ckpt_dir, tmp_path, fake) == first and len(made) == 1
    (ckpt_dir / "hoe.json").write_text((ckpt_dir / "hoe.json").read_text() + " ")
    second = cached_export(base_dir, ckpt_dir, tmp_path, fake)
    assert second != first and len(made) == 2
    (second / "hoe_config.json").write_text(json.dumps({"format_version": 1}))  # made by an older exporter
    assert cached_export(base_dir, ckpt_dir, tmp_path, fake) == second and len(made) == 3
    assert json.loads((second / "hoe_config.json").read_text())["format_version"] == FORMAT_VERSION
    (second / "hoe_config.json").write_text(json.dumps({"format_version": FORMAT_VERSION}))  # before graph revisions
    assert cached_export(base_dir, ckpt_dir, tmp_path, fake) == second and len(made) == 4

    def broken(base, ckpt, out):
        out.mkdir()
        raise HoEError("export failed")

    (ckpt_dir / "hoe.json").write_text((ckpt_dir / "hoe.json").read_text() + " ")
    with pytest.raises(HoEError):
        cached_export(base_dir, ckpt_dir, tmp_path, broken)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
