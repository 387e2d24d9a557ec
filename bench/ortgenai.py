"""`ortgenai`: the peer an edge user would pick — the base model built by onnxruntime-genai's model builder.

    HF base folder ─► python -m onnxruntime_genai.models.builder -p {fp32,int8,int4} -e cpu
                      (block_size / accuracy_level / is_symmetric of our export)  ─► cached folder
      ─► og.Model (threads overlaid: 1 intra-op thread, spinning off) ─► og.Generator per run

It is the base alone (no experts): the comparison asks how far our HoE graph is from the fastest way to
run the base at the same precision. Its Generator keeps its own KV cache (past and present in one
buffer); our greedy loop feeds it the same tokens as every other system (`append_tokens`, then the
last position's logits), so every system pays the same host-side work.

Needs the `bench` extra (onnxruntime-genai 0.18.0); `available()` says whether it is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from hoe.core.errors import ConfigError

from .systems import System

log = logging.getLogger(__name__)

PRECISION = {"fp32": "fp32", "fp16": "fp32", "int8": "int8", "int4": "int4"}  # our weights -> its -p (CPU)


def available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def builder_args(base_dir: Path, out_dir: Path, cache: Path, quant: dict | None) -> list[str]:
    """The builder command for the precision (and block size, symmetry, accuracy level) of `quant`."""
    quant = quant or {}
    precision = PRECISION[quant.get("weights", "fp32")]
    extra = ["hf_token=false"]
    if precision in ("int4", "int8"):
        extra += [f"block_size={quant.get('block_size', 32)}", f"accuracy_level={quant.get('accuracy_level', 4)}",
                  f"is_symmetric={'true' if quant.get('symmetric', True) else 'false'}"]
    return [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(base_dir), "-o", str(out_dir),
            "-p", precision, "-e", "cpu", "-c", str(cache), "--extra_options", *extra]


def cached_build(base_dir: str | Path, quant: dict | None = None, cache: str | Path | None = None) -> Path:
    """Folder of onnxruntime-genai's build of `base_dir` at `quant`'s precision (built once, then reused)."""
    from hoe.core.smollm2 import cache_dir

    from .base_export import _weights_stamp

    if not available():
        raise ConfigError("the ortgenai system needs onnxruntime-genai: pip install 'hoe[bench]'")
    base_dir = Path(base_dir).resolve()
    args = builder_args(base_dir, Path("OUT"), Path("CACHE"), quant)
    key = hashlib.sha256(json.dumps([str(base_dir), _weights_stamp(base_dir), args[3:]]).encode()).hexdigest()[:16]
    folder = Path(cache or cache_dir() / "bench") / f"ortgenai-{args[args.index('-p') + 1]}-{key}"
    if (folder / "genai_config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        cmd = builder_args(base_dir, tmp / "out", tmp / "cache", quant)
        log.info("building the ortgenai peer: %s", " ".join(cmd))
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0 or not (tmp / "out" / "genai_config.json").is_file():
            raise ConfigError(f"onnxruntime-genai's builder failed (exit {run.returncode}): "
                              f"{(run.stderr or run.stdout)[-600:]}")
        shutil.rmtree(folder, ignore_errors=True)
        (tmp / "out").rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def model_file(folder: Path) -> Path:
    config = json.loads((folder / "genai_config.json").read_text())
    return folder / config["model"]["decoder"]["filename"]


class OrtGenaiSystem(System):
    """onnxruntime-genai's Generator on its own build; `max_length` bounds prompt + new tokens."""

    name = "ortgenai"

    def __init__(self, folder: str | Path, threads: int, max_length: int) -> None:
        import onnxruntime_genai as og

        self.og = og
        config = og.Config(str(folder))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1, "session.intra_op.allow_spinning": "0"}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.model = og.Model(config)
        self.max_length = max_length

    def new_state(self, batch: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, batch_size=batch)
        return self.og.Generator(self.model, params)

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        state.append_tokens(np.ascontiguousarray(input_ids, dtype=np.int32))
        logits = np.asarray(state.get_logits())  # [B, 1, V] or [B, V]: the last position
        return logits.reshape(input_ids.shape[0], -1)

    def close(self) -> None:
        self.model = None
