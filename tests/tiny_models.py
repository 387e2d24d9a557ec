"""Tiny random models, PEFT adapters and HoE checkpoints for tests (several architectures)."""

from __future__ import annotations

import torch

ARCHS = ("llama", "qwen2", "mistral")
OBJECTIVES = ["helpful", "positive", "concise"]


def tiny_config(arch: str, vocab: int = 97, context: int = 256):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    common = dict(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                  eos_token_id=1, bos_token_id=0, pad_token_id=0)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[arch]
    extra = {"sliding_window": None} if arch in ("mistral", "qwen2") else {}
    return cls(**common, **extra)


def tiny_model(arch: str, seed: int = 0, context: int = 256):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, context=context)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():  # non-trivial norms too
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def peft_adapter(model, folder, seed: int, rank: int = 4, alpha: float = 8.0, target_modules=None):
    """A PEFT LoRA adapter with non-zero A and B saved to `folder`."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights=False,
                     target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"])
    peft_model = get_peft_model(copy.deepcopy(model), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(folder)
    return folder


def random_routers(ckpt, seed: int = 0, std: float = 0.5):
    """Replace the constant routers of `ckpt` by random non-zero ones (same mask rules)."""
    from hoe.core import names
    from hoe.core.routers import active_mask

    g = torch.Generator().manual_seed(seed)
    cfg = ckpt.config
    routers = {names.ROUTER_MASK: active_mask(cfg.expert_prefs, cfg.anchors, cfg.n_active)}
    for m in cfg.target_modules:
        d_in = ckpt.experts[names.lora_a(m)].shape[2]
        routers[names.router_weight(m)] = torch.randn(cfg.n_routers, cfg.n_experts, d_in, generator=g) * std
        routers[names.router_bias(m)] = torch.randn(cfg.n_routers, cfg.n_experts, generator=g) * std
    ckpt.routers = routers
    return ckpt


def tiny_hoe(arch: str, tmp_path, n_experts: int = 3, rank: int = 4, routed: bool = True, seed: int = 0,
             anchors=None, context: int = 256):
    """(base model, HoECheckpoint) with PEFT experts of different ranks; random routers if `routed`."""
    from hoe.core.assemble import build_checkpoint
    from hoe.core.experts import experts_from_peft

    base = tiny_model(arch, seed, context)
    folders = [peft_adapter(base, tmp_path / f"{arch}_adapter{i}", seed=100 * seed + i, rank=rank - (i % 2))
               for i in range(n_experts)]
    experts, modules = experts_from_peft(folders)
    objectives = [f"obj{i}" for i in range(n_experts)]
    if anchors is None and routed:
        anchors = [list(r) for r in torch.eye(n_experts).tolist()] + [[1.0 / n_experts] * n_experts]
    ckpt = build_checkpoint(base, experts, modules, objectives, anchors=anchors)
    if routed:
        random_routers(ckpt, seed)
    return base, ckpt


def random_experts(base, modules, n_experts: int, rank: int, seed: int = 0, std_b: float = 0.02):
    """E random LoRA experts (non-zero A and B) on `modules` of `base`."""
    from hoe.core.experts import LoraFactors

    g = torch.Generator().manual_seed(seed)
    experts = []
    for _ in range(n_experts):
        expert = {}
        for m in modules:
            lin = base.get_submodule(m)
            a = torch.randn(rank, lin.in_features, generator=g) / lin.in_features**0.5
            b = torch.randn(lin.out_features, rank, generator=g) * std_b
            expert[m] = LoraFactors(a, b, 2.0)
        experts.append(expert)
    return experts


def random_hoe_checkpoint(base, n_experts: int = 3, rank: int = 16, seed: int = 0):
    """HoE checkpoint on every decoder linear: random experts, vertex + uniform anchors, random routers."""
    from hoe.core.assemble import build_checkpoint
    from hoe.core.model import find_target_modules

    modules = find_target_modules(base)
    experts = random_experts(base, modules, n_experts, rank, seed)
    anchors = torch.eye(n_experts).tolist() + [[1.0 / n_experts] * n_experts]
    ckpt = build_checkpoint(base, experts, modules, [f"obj{i}" for i in range(n_experts)], anchors=anchors)
    return random_routers(ckpt, seed, std=0.05)


# Export validation settings for the quantized tiny exports (tests/export/test_quantize.py, test_baked.py).
QUANT_FAST = dict(threads=1, decode_steps=2, quality_prompts=2, quality_tokens=6, fp64_cases=0)
