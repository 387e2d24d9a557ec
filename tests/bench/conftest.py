"""Bench fixtures: one tiny Llama HoE model exported with experts (hoe export) and without (base-ort), once."""

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_export, runtime_helpers


@dataclass
class BenchModel:
    base_dir: Path  # Hugging Face base folder
    ckpt_dir: Path  # HoE checkpoint
    export: Path  # exported HoE folder
    base_export: Path  # base-only export


@pytest.fixture(scope="session")
def bench_model(tmp_path_factory) -> BenchModel:
    from hoe.bench.base_export import export_base
    from runtime_export import exported_folder
    from runtime_helpers import write_char_tokenizer
    from tiny_models import tiny_hoe

    root = tmp_path_factory.mktemp("bench_tiny")
    base, ckpt = tiny_hoe("llama", root)
    base.save_pretrained(root / "base")
    write_char_tokenizer(root / "base")
    ckpt.save(root / "hoe")
    export = exported_folder(root / "base", root / "hoe", root / "out")
    return BenchModel(root / "base", root / "hoe", export, export_base(root / "base", root / "base_out"))


@pytest.fixture(scope="session")
def reference(bench_model):
    """hoe.core's HoEModel on the tiny model (the PyTorch reference)."""
    from hoe.core.loading import load_hoe

    return load_hoe(bench_model.base_dir, bench_model.ckpt_dir)
