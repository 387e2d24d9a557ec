"""The user-facing model: load an exported folder, then generate / stream / chat with a preference per request.

    model = hoe.runtime.load("out/smollm2-hoe", threads=1)
    [r] = model.generate("Write a haiku about rain.", preference=[0.2, 0.5, 0.3])
    for piece in model.stream("Tell me a story.", preference=[1, 0, 0]):
        print(piece, end="")
    reply = model.chat([{"role": "user", "content": "Hi!"}], preference=[0, 1, 0])

One loaded model may serve several threads at once: each request gets its own Generator
(its own KV cache and bindings); the weights, experts and routers are shared.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

from hoe.contract.folder import Manifest
from hoe.core.errors import InputError
from hoe.core.preference import PreferenceRouter

from .backends import BackendConfig, create_backend
from .config import GenerationConfig
from .generator import Generator
from .result import Result
from .tokenizer import Tokenizer

log = logging.getLogger(__name__)


class Model:
    """An exported HoE model on one backend, with its tokenizer and preference router."""

    def __init__(self, manifest: Manifest, backend, tokenizer: Tokenizer | None) -> None:
        self.manifest = manifest
        self.backend = backend
        self.tokenizer = tokenizer
        self.router = PreferenceRouter.from_manifest(manifest)

    # -- facts -----------------------------------------------------------------------------------------
    @property
    def objectives(self) -> list[str]:
        return self.router.objectives

    @property
    def context_length(self) -> int:
        return self.manifest.context_length

    def describe(self) -> dict:
        return {"folder": str(self.manifest.folder), "objectives": self.objectives, **self.backend.describe()}

    def default_config(self, **overrides) -> GenerationConfig:
        """The export's generation defaults (manifest `generation`), with overrides."""
        return GenerationConfig.from_defaults(self.manifest.generation, **overrides)

    # -- requests --------------------------------------------------------------------------------------
    def encode(self, prompt, chat: bool = False) -> list[int]:
        """A prompt (text, token ids, or with `chat` a message list / user text) -> token ids."""
        if _is_ids(prompt):
            return [int(t) for t in prompt]
        if self.tokenizer is None:
            raise InputError("this export has no tokenizer: give prompts as token id lists")
        if chat:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            return self.tokenizer.encode_chat(messages)
        return self.tokenizer.encode(prompt)

    def generator(self, preference=None, config: GenerationConfig | None = None) -> Generator:
        return Generator(self, preference, config)

    def generate(self, prompts, preference=None, config: GenerationConfig | None = None,
                 chat: bool = False) -> list[Result]:
        """Prompts (one or a list; text, token ids or, with `chat`, conversations) -> one Result each.

        preference: one vector for every prompt, or one per prompt ([B, m]).
        """
        gen = self.generator(preference, config)
        gen.append_tokens([self.encode(p, chat) for p in _as_prompt_list(prompts, chat)])
        while not gen.is_done():
            gen.generate_next_token()
        return gen.results()

    def stream(self, prompt, preference=None, config: GenerationConfig | None = None,
               chat: bool = False) -> Iterator[str]:
        """Text pieces of one prompt as they are produced; they add up to the final text."""
        if self.tokenizer is None:
            raise InputError("streaming text needs a tokenizer; this export has none")
        gen = self.generator(preference, config)
        gen.append_tokens([self.encode(prompt, chat)])
        while not gen.is_done():
            gen.generate_next_token()
            if gen.pieces[0]:
                yield gen.pieces[0]

    def chat(self, messages: list[dict], preference=None, config: GenerationConfig | None = None) -> Result:
        """One assistant reply to a conversation, through the model's own chat template."""
        return self.generate([messages], preference, config, chat=True)[0]

    # -- lifecycle ---------------------------------------------------------------------------------------
    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(folder: str | Path, backend: str = "ort", providers=None, threads: int | None = None,
         spinning: bool | None = None, verify: bool = True, base: str | None = None,
         hoe: str | None = None, **extra) -> Model:
    """Load an exported folder (hoe_config.json) on a backend.

    backend: "ort" (onnxruntime) or "torch" (PyTorch reference; base=/hoe= folders, export extra);
    providers: onnxruntime execution providers (names, aliases like "cpu"/"cuda", or (name, options));
    threads: intra-op threads; spinning: ORT thread spin-waiting; verify: check every file's sha256.
    """
    manifest = Manifest.load(folder, verify=verify)
    config = BackendConfig(name=backend, providers=providers, threads=threads, spinning=spinning,
                           base=str(base) if base else None, hoe=str(hoe) if hoe else None, extra=extra)
    runner = create_backend(manifest, config).activate()
    return Model(manifest, runner, Tokenizer.from_manifest(manifest))


def _is_ids(prompt) -> bool:
    return isinstance(prompt, (list, tuple)) and bool(prompt) and all(isinstance(t, int) for t in prompt)


def _as_prompt_list(prompts, chat: bool) -> list:
    """A single prompt -> [prompt]; a list of prompts stays."""
    if isinstance(prompts, str) or _is_ids(prompts):
        return [prompts]
    if chat and isinstance(prompts, list) and prompts and isinstance(prompts[0], dict):
        return [prompts]  # one conversation
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise InputError(f"prompts must be a string, token ids or a non-empty list of those, got {prompts!r}")
    return list(prompts)
