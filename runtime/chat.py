"""A multi-turn conversation with one model: history, the active preference, streamed replies.

Each turn renders the whole conversation through the model's chat template and generates the
reply; the preference may change between turns (`set_preference`) and applies to the next reply.
"""

from __future__ import annotations

from collections.abc import Iterator

from hoe.core.errors import InputError

from .config import GenerationConfig


class ChatSession:
    def __init__(self, model, preference=None, config: GenerationConfig | None = None,
                 system: str | None = None) -> None:
        self.model = model
        self.config = config if config is not None else model.default_config()
        self.system = system
        self.messages: list[dict] = []
        self.preference = None  # the active preference [m] normalised (None: plain base model)
        self._routed = None  # the same, validated and routed once (hoe.core.preference.Routed)
        if model.router.enabled:
            self.set_preference(preference if preference is not None else model.router.uniform())

    def set_preference(self, preference) -> list[float]:
        """Validate, route and activate one preference (for the next replies); returns it normalised."""
        routed = self.model.router.prepare(preference)
        routed.for_batch(1)  # one preference for the conversation
        self._routed, self.preference = routed, routed.rows[0].tolist()
        return self.preference

    def describe_preference(self) -> str:
        if self.preference is None:
            return "no preference (plain base model)"
        return " ".join(f"{name}={w:.2f}" for name, w in zip(self.model.objectives, self.preference))

    def reset(self) -> None:
        self.messages = []

    def conversation(self, user_text: str) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages + [{"role": "user", "content": user_text}]

    def send(self, user_text: str) -> Iterator[str]:
        """Stream the reply to `user_text`; the turn joins the history once the reply is complete."""
        pieces = []
        conversation = self.conversation(user_text)
        n_tokens = len(self.model.encode(conversation, chat=True)) if self.model.tokenizer is not None else 0
        if n_tokens >= self.model.context_length:
            raise InputError(f"the conversation is {n_tokens} tokens, the model's context {self.model.context_length}"
                             f"; expected fewer: type /reset to start over (the history holds "
                             f"{len(self.messages) // 2} turns)")
        for piece in self.model.stream(conversation, self._routed, self.config, chat=True):
            pieces.append(piece)
            yield piece
        self.messages += [{"role": "user", "content": user_text}, {"role": "assistant", "content": "".join(pieces)}]
