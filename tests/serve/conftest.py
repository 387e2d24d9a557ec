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


@pytest.fixture(scope="module")
def live_server(llama_model):
    """`hoe serve` of the tiny llama export on 127.0.0.1 (a free port), max_batch 4."""
    from hoe.serve.config import EngineConfig, ServeConfig
    from hoe.serve.server import BackgroundServer, build_app

    app, engine = build_app(llama_model, ServeConfig(engine=EngineConfig(max_batch=4, max_queue=16)))
    with BackgroundServer(app) as server:
        server.engine = engine
        yield server


@pytest.fixture
def client(live_server):
    import openai

    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="none", max_retries=0, timeout=60)
