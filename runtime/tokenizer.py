"""Tokenizer of an exported folder (`tokenizers` library, no transformers) and the chat template (jinja2).

The chat template is the model's own (`chat_template.jinja`, else `chat_template` in
tokenizer_config.json), rendered the way Hugging Face renders it: sandboxed jinja2 with
trim_blocks/lstrip_blocks, `raise_exception`, `strftime_now` and a `tojson` that keeps non-ASCII.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from hoe.core.errors import CheckpointError, InputError

log = logging.getLogger(__name__)

_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


class Tokenizer:
    """Text <-> token ids, special tokens and chat template of one exported model."""

    def __init__(self, tokenizer_file: Path, config: dict[str, Any] | None = None,
                 chat_template: str | None = None) -> None:
        from tokenizers import Tokenizer as _Tok

        if not tokenizer_file.is_file():
            raise CheckpointError(f"tokenizer file not found: {tokenizer_file}")
        try:
            self._tok = _Tok.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception for any unreadable file
            raise CheckpointError(f"{tokenizer_file} is not a tokenizers JSON file ({e}); expected tokenizer.json "
                                  "as saved by Hugging Face tokenizers") from e
        self._text_tok = _Tok.from_str(self._tok.to_str())  # user text: special-token strings stay text
        self._text_tok.encode_special_tokens = True
        self.config = config or {}
        self.special_tokens = {k: _token_text(self.config.get(k)) for k in _SPECIAL_KEYS if self.config.get(k)}
        self.chat_template = chat_template or _template_from_config(self.config)
        self._compiled = None

    @classmethod
    def from_manifest(cls, manifest) -> Tokenizer | None:
        """The folder's tokenizer, or None when the export has no tokenizer.json (token ids only)."""
        path = manifest.path("tokenizer")
        if path is None or not path.is_file():
            log.info("no tokenizer in %s: prompts must be token ids", manifest.folder)
            return None
        config_path = manifest.path("tokenizer_config")
        config = _read_json(config_path) if config_path is not None and config_path.is_file() else {}
        template_path = manifest.path("chat_template")
        template = template_path.read_text(encoding="utf-8") if template_path and template_path.is_file() else None
        return cls(path, config, template)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise InputError(f"prompt must be a string, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    # -- chat --------------------------------------------------------------------------------------
    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render a conversation ([{"role": ..., "content": ...}, ...]) to the prompt text."""
        if not self.chat_template:
            raise InputError("this model has no chat template (no chat_template.jinja nor tokenizer_config "
                             "chat_template); send plain prompts instead of chat messages")
        from jinja2.exceptions import TemplateError

        _check_messages(messages)
        try:
            if self._compiled is None:
                self._compiled = _environment().from_string(self.chat_template)
            return self._compiled.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         **self.special_tokens)
        except TemplateError as e:
            raise InputError(f"the chat template refused this conversation: {e}") from e

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Token ids of a rendered conversation; the template already places BOS and role tokens.

        Message contents are user text: a "<|im_start|>system" typed by a user must not become role tokens.
        Each content is wrapped in private-use marks before rendering; the template's own text between
        them is tokenized with special tokens, the contents with special-token strings kept as text.
        """
        _check_messages(messages)
        marked = [dict(m, content=_OPEN + _strip_marks(m["content"]) + _CLOSE) for m in messages]
        ids, rest = [], self.apply_chat_template(marked)
        while _OPEN in rest:
            template, _, rest = rest.partition(_OPEN)
            content, found, rest = rest.partition(_CLOSE)
            if not found:
                raise InputError("the chat template cut a message's content; cannot tell user text from roles")
            ids += self.encode(template, add_special_tokens=False) if template else []
            ids += self._text_tok.encode(content, add_special_tokens=False).ids if content else []
        return ids + (self.encode(rest, add_special_tokens=False) if rest else [])


_OPEN, _CLOSE = "\ue000", "\ue001"  # Unicode private-use marks around message contents (encode_chat)


def _strip_marks(text: str) -> str:
    return text.replace(_OPEN, "").replace(_CLOSE, "")


def _environment():
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise InputError(f"chat messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise InputError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r}")


def _token_text(value) -> str:
    return value.get("content", "") if isinstance(value, dict) else str(value)


def _template_from_config(config: dict) -> str | None:
    template = config.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
