"""`hoe generate` / `hoe chat` as a newcomer runs them, and the runtime's error cases on a real export."""

import io
import json
import shutil

import hoe.runtime as hr
import pytest
from hoe.cli.cli import main
from hoe.core.errors import BackendError, CheckpointError, InputError
from hoe.runtime.chat import ChatSession
from hoe.runtime.cli import chat_loop

ARGS = ["--threads", "1", "--max-new-tokens", "6"]


def test_generate_json(llama_export, capsys):
    folder = str(llama_export.folder)
    code = main(["generate", folder, "--prompt", "Hello", "--prompt", "Rain falls", "--preference", "0.2,0.5,0.3",
                 "--preference", "1,0,0", "--json", *ARGS])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)
    assert [r["prompt"] for r in rows] == ["Hello", "Rain falls"]
    for row in rows:
        assert {"text", "token_ids", "preference", "router_mix", "timings", "finish_reason"} <= set(row)
        assert 0 < len(row["token_ids"]) <= 6 and row["timings"]["decode_ms_per_token"] > 0
        assert row["backend"]["providers"] == ["CPUExecutionProvider"]
    with hr.load(folder, threads=1) as model:
        cfg = model.default_config(max_new_tokens=6)
        api = model.generate(["Hello", "Rain falls"], [[0.2, 0.5, 0.3], [1, 0, 0]], cfg)
    assert [r["token_ids"] for r in rows] == [r.token_ids for r in api]
    assert [r["text"] for r in rows] == [r.text for r in api]
    assert rows[0]["preference"] == pytest.approx([0.2, 0.5, 0.3])


def test_generate_plain_and_stream_print_the_same_text(llama_export, capsys):
    folder = str(llama_export.folder)
    base = ["generate", folder, "--prompt", "Hello", "--preference", "0,1,0", "--chat", *ARGS]
    assert main(base) == 0
    plain = capsys.readouterr().out
    assert main(base + ["--stream"]) == 0
    assert capsys.readouterr().out == plain


@pytest.mark.parametrize("extra,message", [
    (["--preference", "0.5,0.5"], "length 3"),
    (["--preference", "0.5,-1,0.5"], ">= 0"),
    (["--preference", "nan,1,1"], "finite"),
    (["--preference", "0,0,0"], "positive sum"),
    (["--preference", "1,0,0", "--backend", "tensorrt-llm"], "unknown backend 'tensorrt-llm'"),
    (["--preference", "1,0,0", "--providers", "warp-drive"], "unknown execution provider 'warp-drive'"),
    (["--preference", "1,0,0", "--top-p", "0"], "top_p"),
])
def test_generate_errors_exit_2_with_expected_and_actual(llama_export, capsys, extra, message):
    code = main(["generate", str(llama_export.folder), "--prompt", "Hello", *extra, *ARGS])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_chat_loop(llama_export):
    with hr.load(llama_export.folder, threads=1) as model:
        session = ChatSession(model, None, model.default_config(max_new_tokens=5))
        lines = iter(["Hello", "/pref 0,0,1", "/pref", "again", "/pref 1,2", "/reset", "/bogus", "/quit", "unseen"])
        out = io.StringIO()
        assert chat_loop(session, lambda prompt: next(lines), out) == 0
        text = out.getvalue()
        assert text.count("assistant> ") == 2
        assert text.count("preference: obj0=0.00 obj1=0.00 obj2=1.00") == 2
        assert "error: preference must have length 3" in text and "conversation cleared" in text
        assert "unknown command /bogus" in text and session.messages == []
        # the reply equals a plain chat call with the same preference and history
        session = ChatSession(model, [0, 0, 1], model.default_config(max_new_tokens=5))
        reply = "".join(session.send("Hello"))
        assert reply == model.chat([{"role": "user", "content": "Hello"}], [0, 0, 1],
                                   model.default_config(max_new_tokens=5)).text
        assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_chat_command_reads_stdin(llama_export, monkeypatch, capsys):
    lines = iter(["Hi there", "/pref 0.2,0.5,0.3"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", str(llama_export.folder), "--preference", "1,0,0", *ARGS]) == 0
    out = capsys.readouterr()
    assert "assistant> " in out.out and "preference: obj0=0.20 obj1=0.50 obj2=0.30" in out.out
    assert "preference: obj0=1.00 obj1=0.00 obj2=0.00" in out.err  # banner shows the starting preference


def test_load_errors(llama_export, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(llama_export.folder, folder)
    with pytest.raises(BackendError, match="unknown execution provider 'gpu9'"):
        hr.load(folder, providers=["gpu9"])
    with pytest.raises(BackendError, match="unknown backend"):
        hr.load(folder, backend="nope")
    with hr.load(folder, threads=1) as model:
        with pytest.raises(InputError, match="at most 255"):
            model.generate([[3] * 256], [1, 0, 0])
    (folder / "routers.safetensors").write_bytes(b"x" * 64)
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        hr.load(folder)
    (folder / "model.onnx").unlink()
    with pytest.raises(CheckpointError, match="model.onnx.*missing"):
        hr.load(folder, verify=False)


def test_provider_fallback_is_reported(llama_export, caplog):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: nothing falls back")
    with caplog.at_level("WARNING"), hr.load(llama_export.folder, providers=["cuda"], threads=1) as model:
        info = model.describe()
        assert info["providers"] == ["CPUExecutionProvider"] and "CUDAExecutionProvider" in info["fallback"]
        assert len(model.generate([[5, 9]], [1, 0, 0], hr.GenerationConfig(max_new_tokens=3))[0].token_ids) > 0
    assert "CUDAExecutionProvider" in caplog.text
