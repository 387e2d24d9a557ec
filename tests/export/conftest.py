"""Export fixtures: tiny models of several architectures, each exported once per session."""

from pathlib import Path

import pytest


def make_tiny(root: Path, arch: str) -> tuple[Path, Path]:
    """(base folder, HoE checkpoint folder) of a tiny random model with PEFT experts and random routers."""
    from tiny_models import tiny_hoe

    base, ckpt = tiny_hoe(arch, root)
    base.save_pretrained(root / "base")
    ckpt.save(root / "hoe")
    return root / "base", root / "hoe"


@pytest.fixture
def tiny_folders():
    """make_tiny(root, arch) -> (base folder, checkpoint folder)."""
    return make_tiny


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """arch -> (base_dir, ckpt_dir, out_dir, ExportResult), exporting (fp32, validated) on first use."""
    from hoe.export.onnx_export import ExportConfig, export

    done = {}

    def get(arch: str):
        if arch not in done:
            root = tmp_path_factory.mktemp(f"export_{arch}")
            base_dir, ckpt_dir = make_tiny(root, arch)
            result = export(base_dir, ckpt_dir, root / "out", ExportConfig(threads=1))
            done[arch] = (base_dir, ckpt_dir, root / "out", result)
        return done[arch]

    return get
