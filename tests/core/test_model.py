"""The PyTorch HoE reference against PEFT, against itself through the KV cache, and its invariants."""

import copy

import pytest
import torch
from hoe.core import names
from hoe.core.assemble import build_checkpoint
from hoe.core.errors import ConfigError, UnsupportedModelError
from hoe.core.experts import experts_from_peft
from hoe.core.generate import positions_from_mask
from hoe.core.loading import hoe_from_checkpoint
from hoe.core.model import find_target_modules, routed_gates
from tiny_models import ARCHS, peft_adapter, random_routers, tiny_hoe, tiny_model

VOCAB = 97


@pytest.fixture(scope="module", params=ARCHS)
def peft_setup(request, tmp_path_factory):
    """(arch, base, adapter folders with ranks 4, 3, 4 and alphas 8, 6, 2)."""
    arch = request.param
    tmp = tmp_path_factory.mktemp(arch)
    base = tiny_model(arch)
    folders = [peft_adapter(base, tmp / f"a{i}", seed=i, rank=r, alpha=a) for i, (r, a) in enumerate([(4, 8), (3, 6),
                                                                                                     (4, 2)])]
    return arch, base, folders


def _peft(base, folders):
    from peft import PeftModel

    pm = PeftModel.from_pretrained(copy.deepcopy(base), folders[0], adapter_name="e0")
    for i, f in enumerate(folders[1:], 1):
        pm.load_adapter(f, adapter_name=f"e{i}")
    return pm.eval()


def _hoe_constant(base, folders):
    experts, modules = experts_from_peft(folders)
    ckpt = build_checkpoint(base, experts, modules, ["a", "b", "c"])
    return hoe_from_checkpoint(copy.deepcopy(base), ckpt)


def _ids(batch=2, length=9, seed=0):
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_vertex_equals_single_peft_adapter(peft_setup):
    _, base, folders = peft_setup
    pm, hoe, ids = _peft(base, folders), _hoe_constant(base, folders), _ids()
    base_logits = base(input_ids=ids).logits
    for i in range(3):
        pm.set_adapter(f"e{i}")
        ref = pm(input_ids=ids).logits
        mix = torch.zeros(2, 3)
        mix[:, i] = 1
        out, _ = hoe(ids, mix)
        assert (ref - base_logits).abs().max() > 1e-2  # the adapter does something
        assert (ref - out).abs().max() <= 1e-5


@torch.no_grad()
@pytest.mark.parametrize("lam", [[0.2, 0.5, 0.3], [0.6, 0.0, 0.4], [1 / 3, 1 / 3, 1 / 3]])
def test_interior_constant_mix_equals_peft_cat(peft_setup, lam):
    _, base, folders = peft_setup
    pm, hoe, ids = _peft(base, folders), _hoe_constant(base, folders), _ids()
    pm.add_weighted_adapter(["e0", "e1", "e2"], lam, "mix", combination_type="cat")
    pm.set_adapter("mix")
    out, _ = hoe(ids, torch.tensor([lam, lam]))
    assert (pm(input_ids=ids).logits - out).abs().max() <= 1e-5


@pytest.fixture(scope="module", params=ARCHS)
def routed(request, tmp_path_factory):
    base, ckpt = tiny_hoe(request.param, tmp_path_factory.mktemp("routed"))
    return hoe_from_checkpoint(base, ckpt), ckpt


@torch.no_grad()
@pytest.mark.parametrize("past, new", [(0, 1), (5, 1), (5, 3), (11, 7)])
def test_kv_cache_equals_full_forward(routed, past, new):
    hoe, _ = routed
    ids = _ids(batch=3, length=past + new, seed=past)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding on one row
    mix = torch.tensor([[1, 0, 0, 0], [0.2, 0.3, 0, 0.5], [0, 0, 0, 1.0]])
    full, _ = hoe(ids, mix, attention_mask=mask, position_ids=positions_from_mask(mask, ids.shape[1]))
    cache = None
    if past:
        _, cache = hoe(ids[:, :past], mix, attention_mask=mask[:, :past], position_ids=positions_from_mask(
            mask[:, :past], past))
    step, _ = hoe(ids[:, past:], mix, attention_mask=mask, position_ids=positions_from_mask(mask, new), cache=cache)
    keep = mask[:, past:].bool()  # padded query positions attend to nothing: compare real tokens
    assert (full[:, past:][keep] - step[keep]).abs().max() <= 1e-5


@torch.no_grad()
def test_left_padding_equals_unpadded(routed):
    hoe, _ = routed
    ids = _ids(batch=1, length=6)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 6, dtype=torch.long)], dim=1)
    mix = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    plain, _ = hoe(ids, mix)
    pad, _ = hoe(padded, mix, attention_mask=mask, position_ids=positions_from_mask(mask, 9))
    assert (plain - pad[:, 3:]).abs().max() <= 1e-5


@torch.no_grad()
def test_different_preferences_give_different_logits(routed):
    hoe, _ = routed
    ids = _ids(batch=1)
    outs = [hoe(ids, torch.tensor([m]))[0] for m in ([1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0])]
    for a in range(3):
        for b in range(a + 1, 3):
            assert (outs[a] - outs[b]).abs().max() > 1e-3


def test_gate_mass_outside_mask_is_exactly_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, generator=g) * 10
    weight, bias = torch.randn(3, 4, 16, generator=g) * 5, torch.randn(3, 4, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1.0]])
    for mix in ([[1, 0, 0], [0, 1, 0]], [[0.5, 0.5, 0], [0.3, 0.3, 0.4]]):
        mix = torch.tensor(mix, dtype=torch.float32)
        gates = routed_gates(x, weight, bias, mask, mix)  # [B,T,E]
        allowed = (mix @ mask) > 0  # [B,E]
        assert torch.all(gates[~allowed[:, None, :].expand_as(gates)] == 0)
        torch.testing.assert_close(gates.sum(-1), torch.ones(2, 5))
        for k in range(3):
            one = routed_gates(x, weight, bias, mask, torch.eye(3)[k].expand(2, 3))
            assert torch.all(one[..., mask[k] == 0] == 0)


@torch.no_grad()
def test_routers_change_gates_per_token(routed):
    hoe, ckpt = routed
    module = ckpt.config.target_modules[0]
    x = torch.randn(1, 4, ckpt.experts[names.lora_a(module)].shape[2])
    t = ckpt.routers
    g = routed_gates(x, t[names.router_weight(module)], t[names.router_bias(module)], t[names.ROUTER_MASK],
                     torch.tensor([[0, 0, 0, 1.0]]))
    assert (g[0, 0] - g[0, 1]).abs().max() > 1e-4  # token-dependent, not constant


def test_router_mix_shape_is_checked(routed):
    hoe, _ = routed
    with pytest.raises(ConfigError, match=r"B=2"):
        hoe(_ids(batch=2), torch.ones(1, 4))


def test_unsupported_architecture_is_named():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel.*Conv1D"):
        find_target_modules(model)


def test_target_discovery_covers_all_block_linears():
    model = tiny_model("llama")
    found = find_target_modules(model)
    assert len(found) == 2 * 7 and "lm_head" not in found
    assert find_target_modules(model, ["q_proj"]) == ["model.layers.0.self_attn.q_proj",
                                                       "model.layers.1.self_attn.q_proj"]


def test_random_routers_are_nonzero(routed):
    _, ckpt = routed
    ckpt = random_routers(ckpt, seed=3)
    assert any(v.abs().sum() > 0 for k, v in ckpt.routers.items() if k.endswith(".weight"))
