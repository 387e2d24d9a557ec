"""A tiny Llama with a character-level chat tokenizer, saved as a Hugging Face folder (for recipe tests)."""

from __future__ import annotations

from pathlib import Path

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?'"
TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}:{% endif %}"
PROMPTS = ["tell me about cats", "how do birds fly", "name a colour", "what is rain", "say hello",
           "why is the sky blue", "give me a tip", "describe a tree", "what is a song", "write a word"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS + ":":
        vocab[c] = len(vocab)
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = TEMPLATE
    return fast


def tiny_chat_model(folder: Path, seed: int = 0, arch: str = "llama") -> Path:
    """Folder with a tiny random model of `arch` (tiny_models.ARCHS) and the character tokenizer."""
    import torch
    from tiny_models import tiny_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab=len(tiny_tokenizer())), dtype=torch.float32)
    with torch.no_grad():  # a head big enough that a LoRA can move the next-token distribution far
        model.lm_head.weight.normal_(0, 0.3)
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def write_prompts(path: Path, prompts=PROMPTS) -> Path:
    import json

    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def tiny_chat_hoe(tmp: Path, objectives=("char:a", "char:e", "concise"), arch: str = "llama") -> tuple[Path, Path]:
    """(base folder, HoE checkpoint folder): random experts, constant vertex routers and a random
    router at the uniform anchor, on the tiny chat model."""
    import numpy as np
    import torch
    from hoe.core.assemble import build_checkpoint
    from hoe.core.loading import load_base
    from hoe.core.model import find_target_modules
    from tiny_models import random_experts, random_routers

    base_dir = tiny_chat_model(tmp / "base", arch=arch)
    base = load_base(base_dir)
    modules = find_target_modules(base)
    m = len(objectives)
    experts = random_experts(base, modules, m, 4, seed=1, std_b=0.3)
    ckpt = build_checkpoint(base, experts, modules, list(objectives), anchors=np.eye(m).tolist() + [[1 / m] * m])
    random_routers(ckpt, seed=2, std=0.5)
    for k, v in ckpt.routers.items():  # vertex routers constant, as the recipe makes them
        if k != "routers.mask":
            v[:m] = 0 if k.endswith(".weight") else torch.log(torch.eye(m).clamp(min=1e-30))
    ckpt.routers["routers.mask"][:m] = torch.eye(m)
    return base_dir, ckpt.save(tmp / "ckpt")
