"""The committed SmolLM2-HoE checkpoint and its Pareto evaluation: contract, size, dtypes, provenance."""

import json

import pytest
import torch
from hoe.core.checkpoint import HoECheckpoint
from hoe.train.data import default_prompts, load_prompts
from hoe.train.recipe import default_out

MODEL = default_out()
FILES = ("hoe.json", "experts.safetensors", "routers.safetensors")


def test_prompt_sets_are_large_enough_and_disjoint():
    train, held = load_prompts(default_prompts("train")), load_prompts(default_prompts("heldout"))
    assert len(train) >= 300 and len(held) >= 100
    assert not set(train) & set(held)


def test_checkpoint_files_size_and_dtypes():
    assert sum((MODEL / f).stat().st_size for f in FILES) <= 30 * 2**20
    ckpt = HoECheckpoint.load(MODEL)
    ckpt.validate()
    cfg = ckpt.config
    assert cfg.objectives == ["helpful", "positive", "concise"] and cfg.rank <= 16
    assert cfg.anchors[:3] == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]] and len(cfg.anchors) >= 4
    assert all(v.dtype == torch.float16 for v in ckpt.experts.values())
    assert all(v.dtype == (torch.float32 if k == "routers.mask" else torch.float16) for k, v in ckpt.routers.items())
    weights = [v for k, v in ckpt.routers.items() if k.endswith(".weight")]
    assert all(float(w[:3].abs().max()) == 0 for w in weights)  # vertex routers constant
    assert max(float(w[3:].abs().max()) for w in weights) > 0  # interior routers trained
    for name in ("MODEL_CARD.md", "training_curves.png", "training.json"):
        assert (MODEL / name).is_file(), name


def test_pareto_results_committed():
    data = json.loads((MODEL / "pareto.json").read_text())
    assert data["n_prompts"] >= 64 and len(data["grid"]) >= 15 and data["decoding"] == "greedy"
    assert {"hoe", "static", "mod", "experts", "base"} <= set(data["systems"])
    assert (MODEL / "pareto.png").is_file()


@pytest.mark.slow
def test_checkpoint_fits_smollm2(smollm2_base):
    from hoe.core.loading import load_base

    HoECheckpoint.load(MODEL).validate(load_base(smollm2_base))


def test_card_of_the_committed_model_renders_with_the_current_code(tmp_path):
    """Its training.json predates the joint router stage: the recipe migrates (uniform anchor, PyTorch rollouts, no
    reward normalisation) and the card (as `hoe bench pareto` refreshes it) still renders, old pareto.json too."""
    import shutil

    from hoe.train.card import write_card
    from hoe.train.config import RecipeConfig

    for name in ("training.json", "pareto.json"):
        shutil.copy(MODEL / name, tmp_path / name)
    summary = json.loads((tmp_path / "training.json").read_text())
    cfg = RecipeConfig.from_dict(summary["recipe"])
    assert cfg.trained_anchors == [[1 / 3] * 3] and cfg.router.rollout == "torch" and not cfg.router.normalise
    card = write_card(tmp_path, cfg, summary).read_text()
    assert "| [0.333, 0.333, 0.333] | [0.658, 0.682, 0.616] | [0.682, 0.675, 0.645] |" in card
    assert "sampled by the PyTorch reference" in card and "| hoe | 0.3836 | – |" in card
