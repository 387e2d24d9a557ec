"""Write a tiny random Llama as a GGUF file with the `gguf` package (llama.cpp's layout, fp32 tensors).

Tensor names come from transformers' own GGUF name map (inverted); q/k rows are permuted the way
llama.cpp's converter does (transformers undoes it on load); the tokenizer is a byte-level BPE ("gpt2").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _bpe_vocab(vocab_size: int) -> tuple[list[str], list[str], list[int]]:
    """(tokens, merges, token types) of a byte-level BPE with exactly `vocab_size` ids (0..2 special)."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet)
    tok.train_from_iterator(["The capital of France is Paris. Rain falls softly."] * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    tokens += [f"<extra_{i}>" for i in range(vocab_size - len(tokens))]  # the corpus is small: pad to size
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t in specials or t.startswith("<extra_") else 1 for t in tokens]  # 3 = control, 1 = normal
    return tokens, merges, types


def write_llama_gguf(model, path: Path) -> Path:
    """GGUF of a LlamaForCausalLM whose vocabulary is the BPE of `_bpe_vocab(vocab_size)` (>= 259 ids)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor, get_gguf_hf_weights_map

    cfg = model.config
    tokens, merges, types = _bpe_vocab(cfg.vocab_size)
    if len(tokens) != cfg.vocab_size:
        raise ValueError(f"the BPE has {len(tokens)} tokens, the model's vocab is {cfg.vocab_size}")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"]))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_pad_token_id(0)
    to_gguf = {hf: g for g, hf in get_gguf_hf_weights_map(model, LlamaTensorProcessor(config=cfg.to_dict())).items()}
    for name, tensor in model.state_dict().items():
        array = tensor.detach().float().numpy()
        if ".q_proj." in name:
            array = _permute(array, cfg.num_attention_heads)
        elif ".k_proj." in name:
            array = _permute(array, cfg.num_key_value_heads)
        w.add_tensor(to_gguf[name], np.ascontiguousarray(array))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
