import json
import subprocess
import sys

import pytest
import torch
from hoe.core import HoEConfig, names
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError
from hoe.core.generate import generate
from hoe.core.loading import hoe_from_checkpoint
from tiny_models import peft_adapter, tiny_hoe, tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    base, ckpt = tiny_hoe("llama", tmp)
    return base, ckpt, ckpt.save(tmp / "hoe")


def test_save_load_bit_exact(saved):
    _, ckpt, folder = saved
    loaded = HoECheckpoint.load(folder)
    assert loaded.config == ckpt.config
    for ours, theirs in ((ckpt.experts, loaded.experts), (ckpt.routers, loaded.routers)):
        assert sorted(ours) == sorted(theirs)
        for k in ours:
            assert torch.equal(ours[k], theirs[k]), k


def test_config_json_round_trip(saved, tmp_path):
    _, ckpt, _ = saved
    ckpt.config.save(tmp_path / "c.json")
    assert HoEConfig.load(tmp_path / "c.json") == ckpt.config
    assert HoEConfig.from_dict(json.loads(json.dumps(ckpt.config.to_dict()))) == ckpt.config


def test_other_base_is_refused(saved):
    _, _, folder = saved
    loaded = HoECheckpoint.load(folder)
    loaded.validate(tiny_model("llama", seed=0))  # same base: fine
    with pytest.raises(CheckpointError, match="another base model: weights_sha256"):
        loaded.validate(tiny_model("llama", seed=1))
    with pytest.raises(ShapeMismatchError, match=r"experts.model.layers.0.mlp.down_proj.lora_A: expected shape"):
        loaded.validate(_wider_llama())


def _wider_llama():
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    cfg.intermediate_size = 64
    return AutoModelForCausalLM.from_config(cfg)


def test_existing_folder_refused_unless_overwrite(saved):
    _, ckpt, folder = saved
    with pytest.raises(CheckpointError, match="exists"):
        ckpt.save(folder)
    ckpt.save(folder, overwrite=True)
    assert not any(p.name.startswith(".") for p in folder.parent.iterdir())  # no temp leftovers


def test_missing_and_corrupt_files(saved, tmp_path):
    _, ckpt, _ = saved
    folder = ckpt.save(tmp_path / "c")
    (folder / "routers.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        HoECheckpoint.load(folder)
    (folder / "experts.safetensors").unlink()
    with pytest.raises(CheckpointError, match="file not found"):
        HoECheckpoint.load(folder)
    with pytest.raises(CheckpointError, match="folder not found"):
        HoECheckpoint.load(tmp_path / "nope")
    (folder / "hoe.json").write_text("{")
    with pytest.raises(ConfigError, match="not valid JSON"):
        HoECheckpoint.load(folder)


def test_tensor_shape_mismatch_names_module(saved):
    _, ckpt, folder = saved
    bad = HoECheckpoint.load(folder)
    name = names.router_weight(bad.config.target_modules[3])
    bad.routers[name] = bad.routers[name][:, :, :-1]
    with pytest.raises(ShapeMismatchError, match=rf"{name}: expected shape \(4, 3, 32\), got \(4, 3, 31\)"):
        bad.validate()


def test_config_rejects_bad_values():
    ok = dict(objectives=["a", "b"], expert_prefs=[[1, 0], [0, 1]], anchors=[[1, 0]], target_modules=["m"], rank=2)
    HoEConfig(**ok)
    with pytest.raises(ConfigError, match=r"anchors\[0\] must have length 2"):
        HoEConfig(**{**ok, "anchors": [[1, 0, 0]]})
    with pytest.raises(ConfigError, match="simplex point"):
        HoEConfig(**{**ok, "expert_prefs": [[0.5, 0.6], [0, 1]]})
    with pytest.raises(ConfigError, match="rank must be a positive integer, got 0"):
        HoEConfig(**{**ok, "rank": 0})
    with pytest.raises(ConfigError, match="unknown fields"):
        HoEConfig.from_dict({**ok, "colour": "red"})
    with pytest.raises(ConfigError, match="format_version 9"):
        HoEConfig(**ok, format_version=9)


@torch.no_grad()
def test_reference_generate_greedy_and_seeded(saved):
    base, ckpt, _ = saved
    hoe = hoe_from_checkpoint(base, ckpt)
    ids = torch.randint(2, 97, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mix = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1.0]])
    greedy = generate(hoe, ids, mask, mix, max_new_tokens=6)
    # greedy == repeated full forwards with argmax
    seq = ids
    for i in range(6):
        logits, _ = hoe(seq, mix)
        nxt = logits[:, -1].argmax(-1)
        assert torch.equal(nxt, greedy[:, i])
        seq = torch.cat([seq, nxt[:, None]], 1)
    a = generate(hoe, ids, mask, mix, 8, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    b = generate(hoe, ids, mask, mix, 8, temperature=0.9, top_k=20, top_p=0.9, seed=3)
    assert torch.equal(a, b)


def test_assemble_cli_from_peft(tmp_path):
    base = tiny_model("mistral")
    base.save_pretrained(tmp_path / "base")
    adapters = [str(peft_adapter(base, tmp_path / f"a{i}", seed=i)) for i in range(2)]
    cmd = [sys.executable, "-m", "hoe.cli.cli", "assemble", "--base", str(tmp_path / "base"), "--peft", *adapters,
           "--objectives", "helpful,concise", "--out", str(tmp_path / "ckpt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ckpt = HoECheckpoint.load(tmp_path / "ckpt")
    assert ckpt.config.objectives == ["helpful", "concise"] and ckpt.config.n_routers == 2
    assert ckpt.routers[names.ROUTER_MASK].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "exists" in again.stderr


def test_assemble_cli_from_finetuned(tmp_path):
    base = tiny_model("llama")
    base.save_pretrained(tmp_path / "base")
    for i in range(2):
        tuned = tiny_model("llama")
        with torch.no_grad():
            tuned.model.layers[0].mlp.up_proj.weight.add_(0.05 * torch.randn(48, 32))
        tuned.save_pretrained(tmp_path / f"ft{i}")
    cmd = [sys.executable, "-m", "hoe.cli.cli", "assemble", "--base", str(tmp_path / "base"), "--finetuned",
           str(tmp_path / "ft0"), str(tmp_path / "ft1"), "--rank", "8", "--objectives", "a,b", "--out",
           str(tmp_path / "ckpt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    ckpt = HoECheckpoint.load(tmp_path / "ckpt")
    assert ckpt.config.rank == 8 and len(ckpt.config.target_modules) == 14
