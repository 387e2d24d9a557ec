"""`hoe serve` as users start it: a subprocess where torch cannot be imported, answering the openai client."""

import signal
import socket
import subprocess
import sys
import time

import httpx
import openai

SCRIPT = r"""
import sys
for name in ("torch", "transformers", "onnx", "onnxscript", "peft"):
    sys.modules[name] = None  # any import of them now raises ImportError
from hoe.cli.cli import main
sys.exit(main(["serve", *sys.argv[1:]]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hoe_serve_without_torch_answers_and_stops_on_ctrl_c(llama_folder, llama_model):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(llama_folder), "--port", str(port), "--threads", "1",
                             "--max-batch", "2", "--model-name", "tiny"], stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "hoe serve did not come up within 120 s"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6,
                                           extra_body={"preference": [0, 0, 1], "ignore_eos": True})
        cfg = llama_model.default_config(max_new_tokens=6, ignore_eos=True)
        ref = llama_model.generate([[{"role": "user", "content": "Hi"}]], [0, 0, 1], cfg, chat=True)[0]
        assert r.choices[0].message.content == ref.text
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, proc.stderr.read()[-3000:]


def test_hoe_serve_bad_folder_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("hoe serve: error:") and "Traceback" not in proc.stderr
