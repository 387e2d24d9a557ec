"""The capability probe: what is refused, where (before any weights load) and with which words."""

from __future__ import annotations

import json

import pytest
from arch_helpers import cli
from hoe.core.capability import CACHE_LAYERS, probe_base, probe_config
from hoe.core.errors import CheckpointError, UnsupportedModelError

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2)


def _config(cls_name: str, **extra):
    import transformers

    return getattr(transformers, cls_name)(**{**TINY, **extra})


@pytest.mark.parametrize("cls_name, extra, words", [
    ("Qwen3NextConfig", {}, r"attention kind \['linear_attention'\]"),
    ("Llama4TextConfig", {}, r"attention kind \['chunked_attention'\]"),
    ("MambaConfig", {}, r"attention kind \['linear_attention'\]"),
    ("BartConfig", {}, "encoder-decoder"),
])
def test_refused_by_config_with_the_part_named(tmp_path, cls_name, extra, words):
    """config.json alone is enough to refuse: no weights are in the folder at all."""
    _config(cls_name, **extra).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=words):
        probe_base(tmp_path)


def test_conv1d_projections_are_named():
    from transformers import GPT2Config

    with pytest.raises(UnsupportedModelError, match=r"GPT2LMHeadModel.*Conv1D \(e\.g\. transformer\.h\.0\.attn"):
        probe_config(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4))


def test_cache_layer_class_is_named():
    from hoe.core.capability import _check_cache_layers
    from transformers import DynamicCache, StaticLayer

    config = _config("LlamaConfig")
    cache = DynamicCache(config=config)
    cache.layers[1] = StaticLayer(max_cache_len=8)
    with pytest.raises(UnsupportedModelError, match=f"cache layer 1 is StaticLayer; supported cache layers: "
                                                    f"{', '.join(CACHE_LAYERS)}"):
        _check_cache_layers(cache, config, "LlamaForCausalLM")


@pytest.mark.parametrize("cls_name, extra, kinds", [
    ("LlamaConfig", {}, ["full_attention"] * 2),
    ("Gemma3TextConfig", {"head_dim": 8, "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
     ["sliding_attention", "full_attention"]),
    ("Phi3Config", {"pad_token_id": 0}, ["full_attention"] * 2),
])
def test_accepted_with_what_was_found(cls_name, extra, kinds):
    report = probe_config(_config(cls_name, **extra))
    assert report.attention_kinds == kinds and report.blocks == "model.layers"
    want = ["DynamicSlidingWindowLayer" if k == "sliding_attention" else "DynamicLayer" for k in kinds]
    assert report.cache_layers == want
    assert report.sliding_window == (4 if "sliding_attention" in kinds else None)
    fused = cls_name == "Phi3Config"
    assert any(m.endswith("qkv_proj") for m in report.target_modules) == fused


def test_assemble_refuses_before_loading_weights(tmp_path, capsys):
    """`hoe assemble` on a base of an unsupported kind: exit 2, one line naming why, no checkpoint written.
    The base folder has no weights, so the refusal cannot have come after loading them."""
    from tiny_models import peft_adapter, tiny_model

    adapter = peft_adapter(tiny_model("llama"), tmp_path / "adapter", seed=0, target_modules=["q_proj"])
    _config("Qwen3NextConfig").save_pretrained(tmp_path / "base")
    capsys.readouterr()
    rc, _ = cli(["assemble", "--base", str(tmp_path / "base"), "--peft", str(adapter), "--objectives", "a",
                 "--out", str(tmp_path / "hoe")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "linear_attention" in err[0] and err[0].startswith("hoe assemble: error:")
    assert not (tmp_path / "hoe").exists()


def test_assemble_refuses_a_non_linear_target(tmp_path, capsys):
    """A PEFT adapter on GPT-2's Conv1D projections: the module and its type are named."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel(GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=4))
    base.save_pretrained(tmp_path / "base")
    get_peft_model(base, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True)).save_pretrained(
        tmp_path / "adapter")
    capsys.readouterr()
    rc, _ = cli(["assemble", "--base", str(tmp_path / "base"), "--peft", str(tmp_path / "adapter"),
                 "--objectives", "a", "--out", str(tmp_path / "hoe")])
    assert rc == 2 and "transformer.h.0.attn.c_attn is Conv1D" in capsys.readouterr().err


def test_export_and_load_hoe_probe_first(tmp_path):
    from hoe.core.loading import load_hoe
    from hoe.export.onnx_export import ExportConfig, export

    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 97,
                                                                "hidden_size": 32, "num_hidden_layers": 2}))
    with pytest.raises(UnsupportedModelError, match="linear_attention"):
        export(tmp_path / "base", None, tmp_path / "out", ExportConfig(experts=False))
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError):  # the checkpoint is read first: a missing one is named
        load_hoe(tmp_path / "base", tmp_path / "no_ckpt")
