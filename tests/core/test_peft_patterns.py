"""PEFT `rank_pattern` / `alpha_pattern` read exactly as PEFT resolves them (peft.utils.other.get_pattern_key):
suffix keys, regex keys, first match in dict order; checked against the scaling PEFT itself builds."""

import json

import pytest
import torch
from hoe.core.experts import pattern_value, read_peft_adapter
from peft.utils.other import get_pattern_key
from tiny_models import tiny_model

MODULES = ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj", "model.layers.0.mlp.down_proj",
           "model.layers.10.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
PATTERNS = [{}, {"q_proj": 2}, {"layers.0.self_attn.q_proj": 16}, {"model.layers.1.self_attn.q_proj": 3},
            {r"layers\.\d\.self_attn\.q_proj": 5, "q_proj": 7}, {"q_proj": 7, r"layers\.0\..*": 5},
            {"0.self_attn.q_proj": 9}, {"proj": 4}, {"self_attn.v_proj": 6, "down_proj": 1}]


@pytest.mark.parametrize("pattern", PATTERNS, ids=[json.dumps(p) for p in PATTERNS])
def test_pattern_value_is_peft_resolution(pattern):
    for module in MODULES:
        expected = pattern.get(get_pattern_key(pattern.keys(), module), "default")
        assert pattern_value(pattern, module, "default") == expected, module


def _peft_model(model, alpha_pattern, rank_pattern):
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "v_proj", "down_proj"],
                     alpha_pattern=alpha_pattern, rank_pattern=rank_pattern)
    return get_peft_model(copy.deepcopy(model), cfg)


@pytest.mark.parametrize("alpha_pattern, rank_pattern", [
    ({"layers.0.self_attn.q_proj": 2}, {}),
    ({}, {"layers.0.self_attn.q_proj": 2}),
    ({"model.layers.1.self_attn.v_proj": 32, "down_proj": 1}, {"layers.1.mlp.down_proj": 8}),
    ({r"layers\.\d\.self_attn\.q_proj": 3}, {"v_proj": 2}),
])
def test_adapter_scaling_and_rank_equal_peft(tmp_path, alpha_pattern, rank_pattern):
    model = _peft_model(tiny_model("llama"), alpha_pattern, rank_pattern)
    model.save_pretrained(tmp_path)
    expert, _ = read_peft_adapter(tmp_path)
    peft_layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules()
                   if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling}
    assert sorted(expert) == sorted(peft_layers)
    for name, layer in peft_layers.items():
        assert expert[name].scaling == pytest.approx(layer.scaling["default"]), name
        assert expert[name].lora_a.shape[0] == layer.r["default"], name
