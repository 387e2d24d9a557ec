"""Serving fixtures: tiny random HoE exports (the runtime tests' recipe) and a loaded model per architecture."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_export, runtime_helpers


@pytest.fixture(scope="session")
def serve_export(tmp_path_factory):
    """serve_export(arch) -> exported folder of a tiny random HoE model (3 experts, random non-zero routers,
    4 anchors, char tokenizer + ChatML template), made once per session."""
    from runtime_export import exported_folder
    from runtime_helpers import write_char_tokenizer
    from tiny_models import tiny_hoe

    cache = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            root = tmp_path_factory.mktemp(f"serve_{arch}")
            base, ckpt = tiny_hoe(arch, root)
            base.save_pretrained(root / "base")
            write_char_tokenizer(root / "base")
            ckpt.save(root / "hoe")
            cache[arch] = exported_folder(root / "base", root / "hoe", root / "tiny-hoe")
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def llama_folder(serve_export) -> Path:
    return serve_export("llama")


@pytest.fixture(scope="session")
def llama_model(llama_folder):
    import hoe.runtime as hr

    with hr.load(llama_folder, threads=1) as model:
        yield model
