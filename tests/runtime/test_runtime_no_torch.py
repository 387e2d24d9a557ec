"""The runtime and `hoe generate` work where torch, transformers and onnx cannot be imported."""

import json
import subprocess
import sys

import hoe.runtime as hr

SCRIPT = r"""
import json, sys, io, contextlib
for name in ("torch", "transformers", "onnx", "onnxscript", "peft"):
    sys.modules[name] = None  # any import of them now raises ImportError
import hoe.runtime as hr
from hoe.cli.cli import main
folder = sys.argv[1]
model = hr.load(folder, threads=1)
[r] = model.generate([[5, 9, 3, 7]], [0.2, 0.5, 0.3], hr.GenerationConfig(max_new_tokens=8, ignore_eos=True))
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(["generate", folder, "--prompt", "Hi", "--preference", "0.2,0.5,0.3", "--max-new-tokens", "4",
                 "--threads", "1", "--json"])
heavy = sorted(n for n in ("torch", "transformers", "onnx") if sys.modules.get(n) is not None)
print(json.dumps({"ids": r.token_ids, "cli": code, "cli_out": json.loads(out.getvalue()), "heavy": heavy}))
"""


def test_generates_without_torch(llama_export):
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(llama_export.folder)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    with hr.load(llama_export.folder, threads=1) as model:
        [r] = model.generate([[5, 9, 3, 7]], [0.2, 0.5, 0.3], hr.GenerationConfig(max_new_tokens=8, ignore_eos=True))
    assert got["ids"] == r.token_ids
    assert got["cli"] == 0 and len(got["cli_out"]) == 1 and got["heavy"] == []
