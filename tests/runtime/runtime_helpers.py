"""Runtime test helpers: a small byte-level BPE tokenizer, a ChatML template, a numpy fake backend
(so generator logic is tested without ONNX; ONNX parity lives in test_runtime_parity.py), and two of the kernels'
definitions in numpy (the norm prologue, the SwiGLU epilogue)."""

from __future__ import annotations

import json

import numpy as np
from hoe.contract.folder import Manifest
from hoe.runtime.backends import Backend, DecodeState
from hoe.runtime.model import Model

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = ["The capital of France is Paris.", "Hello world, how are you today?", "Ünïcödé tëxt and emoji 🙂 here",
          "Rain falls softly on the quiet town.", "A preference vector weighs helpful, positive and concise."]


def build_tokenizer(vocab_size: int = 300):
    """A byte-level BPE `tokenizers.Tokenizer` trained on a few sentences (ids 0..2 are special)."""
    from tokenizers import Tokenizer as HFTok
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTok(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    return tok


def write_tokenizer(folder, vocab_size: int = 300, template: str | None = CHATML) -> None:
    """tokenizer.json, tokenizer_config.json (+ chat template) into `folder`."""
    build_tokenizer(vocab_size).save(str(folder / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    if template:
        config["chat_template"] = template
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


# ------------------------------------------------------------------------------------- fake backend


def fake_manifest(folder, vocab: int = 64, context: int = 64, n_obj: int = 3, eos=(2,), extra_anchor=True):
    anchors = np.eye(n_obj).tolist() + ([[1.0 / n_obj] * n_obj] if extra_anchor else [])
    data = {"format_version": 2, "model": {"file": "model.onnx"},
            "architecture": {"num_layers": 1, "vocab_size": vocab, "max_position_embeddings": context},
            "inputs": {}, "outputs": {}, "kv_cache": {},
            "hoe": {"objectives": [f"obj{i}" for i in range(n_obj)], "anchors": anchors, "n_route": n_obj,
                    "expert_inputs": [], "router_inputs": []},
            "files": {}, "tokens": {"eos_token_ids": list(eos), "pad_token_id": 0}, "generation": {}}
    return Manifest(folder, data)


class FakeState(DecodeState):
    def __init__(self, batch):
        super().__init__(batch)
        self.history = [[] for _ in range(batch)]  # real (unmasked) tokens seen, per row


class FakeBackend(Backend):
    """logits[b] = E[last real token] + P[position] + router_mix[b] @ R + 0.3 * mean(E[real tokens so far]).

    Checks what a real graph relies on: mask width = past + new, positions count real tokens only.
    """

    name = "fake"

    def _activate(self):
        rng = np.random.default_rng(0)
        v, k = self.manifest.vocab_size, len(self.manifest.anchors)
        ctx = self.manifest.context_length
        self.E, self.P, self.R = rng.normal(size=(v, v)), rng.normal(size=(ctx, v)), 3 * rng.normal(size=(k, v))
        self.calls = 0

    def _deactivate(self):
        pass

    def infer(self, feed):
        raise NotImplementedError

    def new_state(self, batch):
        return FakeState(batch)

    def step(self, state, input_ids, attention_mask, position_ids, router_mix):
        self.calls += 1
        b, t = input_ids.shape
        assert attention_mask.shape == (b, state.past_length + t), (attention_mask.shape, state.past_length, t)
        assert position_ids.shape == (b, t) and router_mix.dtype == np.float32
        out = np.zeros((b, self.manifest.vocab_size), dtype=np.float32)
        for r in range(b):
            new_mask = attention_mask[r, -t:]
            for j in range(t):
                if new_mask[j]:
                    expect = min(len(state.history[r]), self.manifest.context_length - 1)  # clamped past the end
                    assert position_ids[r, j] == expect, "positions must count real tokens"
                    state.history[r].append(int(input_ids[r, j]))
            h = state.history[r]
            pos = min(len(h), len(self.P)) - 1
            out[r] = self.E[h[-1]] + self.P[pos] + router_mix[r] @ self.R + 0.3 * self.E[h].mean(0)
        state.past_length += t
        return out


def fake_model(tmp_path, tokenizer=None, **kw) -> Model:
    manifest = fake_manifest(tmp_path, **kw)
    backend = FakeBackend(manifest, None).activate()
    return Model(manifest, backend, tokenizer)


# ------------------------------------------------------------------------------------- char tokenizer

CHAR_SPECIALS = ["<|endoftext|>", "<|im_end|>", "<|im_start|>"]  # ids 0 (bos/pad), 1 (eos), 2: tiny configs' ids


def write_char_tokenizer(folder, vocab_size: int = 97) -> None:
    """A character-level tokenizer with exactly `vocab_size` ids (tiny models have 97) + ChatML template."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTok

    chars = ["\n"] + [chr(c) for c in range(32, 127)]
    vocab = {t: i for i, t in enumerate(CHAR_SPECIALS + chars[: vocab_size - len(CHAR_SPECIALS)])}
    tok = HFTok(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(CHAR_SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").write_text(CHATML)


def rms_norm(x, gamma, epsilon):
    """The norm prologue of hoe's products (runtime/csrc/norm.h) in float64."""
    x = x.astype(np.float64)
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + epsilon) * gamma


def swiglu(y):
    """The SwiGLU epilogue of hoe's products (runtime/csrc/activation.h) in float64; y = [gate | up] (last axis)."""
    gate, up = np.split(y.astype(np.float64), 2, axis=-1)
    return gate / (1.0 + np.exp(-gate)) * up
