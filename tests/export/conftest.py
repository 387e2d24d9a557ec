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


@pytest.fixture
def tied_folders(monkeypatch):
    """make_tiny(root, arch) of a model whose lm_head is tied to its embedding table (vocab 97)."""
    import tiny_models

    plain = tiny_models.tiny_config

    def tied(arch, vocab=97, **kwargs):
        cfg = plain(arch, vocab, **kwargs)
        cfg.tie_word_embeddings = True
        return cfg

    monkeypatch.setattr(tiny_models, "tiny_config", tied)
    return make_tiny


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """(arch, target="ort-cpu") -> (base_dir, ckpt_dir, out_dir, ExportResult), exporting (fp32, validated) on
    first use; one tiny model per arch, whatever the target."""
    from hoe.export.onnx_export import ExportConfig, export

    done, folders = {}, {}

    def get(arch: str, target: str = "ort-cpu"):
        if (arch, target) not in done:
            if arch not in folders:
                root = tmp_path_factory.mktemp(f"export_{arch}")
                folders[arch] = (root, *make_tiny(root, arch))
            root, base_dir, ckpt_dir = folders[arch]
            out = root / f"out-{target}"
            result = export(base_dir, ckpt_dir, out, ExportConfig(threads=1, target=target))
            done[arch, target] = (base_dir, ckpt_dir, out, result)
        return done[arch, target]

    return get


@pytest.fixture(scope="session")
def quantized(tmp_path_factory):
    """(arch, weights, symmetric, block, target="ort-cpu", bake=False, offsets=False, kernel=False, linear=False) ->
    (base_dir, ckpt_dir, out, validation report) of a tiny model exported at that weight precision (bake:
    --bake-experts, offsets: --block-offsets, kernel: --mixture-kernel, linear: --linear-kernel), once per
    session."""
    from hoe.export.onnx_export import ExportConfig, export
    from hoe.export.validate import ValidationConfig, validate_export
    from tiny_models import QUANT_FAST

    done = {}

    def get(arch, weights, symmetric, block, target="ort-cpu", bake=False, offsets=False, kernel=False,
            linear=False):
        key = (arch, weights, symmetric, block, target, bake, offsets, kernel, linear)
        if key not in done:
            root = tmp_path_factory.mktemp(f"q_{arch}_{weights}{'_baked' * bake}{'_offsets' * offsets}"
                                           f"{'_kernel' * kernel}{'_linear' * linear}")
            base_dir, ckpt_dir = make_tiny(root, arch)
            export(base_dir, ckpt_dir, root / "out", ExportConfig(threads=1, validate=False, weights=weights,
                                                                  symmetric=symmetric, block_size=block,
                                                                  target=target, bake_experts=bake,
                                                                  offsets=offsets, mixture_kernel=kernel,
                                                                  linear_kernel=linear))
            report = validate_export(root / "out", base_dir, ckpt_dir, ValidationConfig(**QUANT_FAST))
            done[key] = (base_dir, ckpt_dir, root / "out", report)
        return done[key]

    return get


@pytest.fixture
def revalidate():
    """(folder, base_dir, ckpt_dir) -> validate_export's report with the fast quantized config, no quality prompts."""
    from hoe.export.validate import ValidationConfig, validate_export
    from tiny_models import QUANT_FAST

    return lambda folder, base_dir, ckpt_dir: validate_export(
        folder, base_dir, ckpt_dir, ValidationConfig(**{**QUANT_FAST, "quality_prompts": 0}))


@pytest.fixture
def swap_random(tmp_path):
    """(base_dir, ckpt_dir, out, seed) -> (folder, other_ckpt): a copy of export `out` into which another random
    checkpoint of the same E, r and K (3 experts, the checkpoint's rank and anchors) was swapped."""
    import json
    import shutil

    from hoe.contract.manifest import swap_experts
    from hoe.core.loading import load_base
    from tiny_models import random_hoe_checkpoint

    def swap(base_dir, ckpt_dir, out, seed):
        folder, other_dir = tmp_path / "swapped", tmp_path / "other"
        shutil.copytree(out, folder)
        hoe = json.loads((ckpt_dir / "hoe.json").read_text())
        other = random_hoe_checkpoint(load_base(base_dir), n_experts=3, rank=hoe["rank"], seed=seed)
        assert len(other.config.anchors) == len(hoe["anchors"])  # same E, r and K
        other.save(other_dir)
        swap_experts(folder, other_dir)
        return folder, other_dir

    return swap
