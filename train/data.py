"""Prompts, chat formatting and answer candidates for the recipe and the benchmarks."""

from __future__ import annotations

import json
import re
from pathlib import Path

from hoe.core.errors import ConfigError, InputError


def package_folder(package: str) -> Path:
    """Folder of a data package (`hoe.models`, `hoe.data`): the checkout's models/ or data/ in an editable
    install, site-packages in a wheel."""
    from importlib import import_module

    return Path(import_module(package).__file__).resolve().parent


def default_prompts(split: str) -> Path:
    if split not in ("train", "heldout"):
        raise ConfigError(f"prompt split must be 'train' or 'heldout', got {split!r}")
    return package_folder("hoe.data") / "prompts" / f"{split}.jsonl"


def load_prompts(path: str | Path, limit: int = 0) -> list[str]:
    """Prompts of a JSONL file with one {"prompt": ...} per line (the first `limit` when limit > 0)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file not found: {path}")
    prompts = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            prompts.append(str(json.loads(line)["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}:{i + 1}: expected a JSON object with a 'prompt' field ({e})") from e
    if limit > 0:
        if len(prompts) < limit:
            raise ConfigError(f"{path} has {len(prompts)} prompts, {limit} requested")
        prompts = prompts[:limit]
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts


class ChatCodec:
    """Chat-template encoding of prompts and plain encoding of answers with a Hugging Face tokenizer."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_id = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_id)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatCodec:
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(folder))

    def prompt_ids(self, prompt: str) -> list[int]:
        messages = [{"role": "user", "content": prompt}]
        out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(t) for t in ids]

    def answer_ids(self, text: str, finished: bool) -> list[int]:
        """Target tokens of an answer: its text, then EOS when the answer is complete."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [int(t) for t in ids] + ([self.eos_id] if finished else [])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)")


def sentence_prefixes(text: str) -> list[str]:
    """Every prefix of `text` that ends at a sentence end ('.', '!' or '?' before a space or the end),
    the whole text excluded."""
    text = text.strip()
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    return [text[:c].strip() for c in cuts if c < len(text)]
