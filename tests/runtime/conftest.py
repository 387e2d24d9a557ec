"""Runtime fixtures (helpers live in runtime_helpers.py)."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hoe.runtime.tokenizer import Tokenizer
from runtime_helpers import write_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    return Tokenizer(tokenizer_dir / "tokenizer.json", config)




@dataclass
class Exported:
    """An exported tiny HoE folder plus what made it (for PyTorch reference runs)."""

    arch: str
    folder: Path
    base_dir: Path
    ckpt_dir: Path
    reference: object  # hoe.core HoEModel


@pytest.fixture(scope="session")
def export_tiny(tmp_path_factory):
    """export_tiny(arch) -> Exported: a tiny random HoE model (PEFT experts of ranks 4/3, random non-zero
    routers, 4 anchors, char tokenizer + ChatML template) exported to ONNX once per session."""
    from hoe.core.loading import hoe_from_checkpoint
    from runtime_export import exported_folder
    from runtime_helpers import write_char_tokenizer
    from tiny_models import tiny_hoe

    cache = {}

    def make(arch: str) -> Exported:
        if arch not in cache:
            root = tmp_path_factory.mktemp(f"export_{arch}")
            base, ckpt = tiny_hoe(arch, root)
            base.save_pretrained(root / "base")
            write_char_tokenizer(root / "base")
            ckpt.save(root / "hoe")
            folder = exported_folder(root / "base", root / "hoe", root / "out")
            cache[arch] = Exported(arch, folder, root / "base", root / "hoe", hoe_from_checkpoint(base, ckpt))
        return cache[arch]

    return make


@pytest.fixture(scope="session", params=["llama", "qwen2", "mistral"])
def tiny_export(request, export_tiny) -> Exported:
    return export_tiny(request.param)


@pytest.fixture(scope="session")
def llama_export(export_tiny) -> Exported:
    return export_tiny("llama")
