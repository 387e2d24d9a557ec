"""Generation settings (torch-free), one dataclass saved as JSON like every config of the project."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError


@dataclass
class GenerationConfig(JsonConfig):
    """How tokens are chosen and when a row stops. Greedy when `temperature` is 0."""

    max_new_tokens: int = 128  # new tokens per row at most (also capped by the model's context)
    temperature: float = 0.0  # 0 -> greedy argmax; > 0 -> sample from softmax(logits / temperature)
    top_k: int = 0  # keep the k most likely tokens before sampling; 0 -> all
    top_p: float = 1.0  # keep the smallest set of tokens whose probability reaches top_p; 1 -> all
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL/HF rule)
    seed: int | None = None  # seeds the sampler; the same seed gives the same tokens
    stop: list[str] = field(default_factory=list)  # stop strings; the text is cut before the first one
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop ids besides the model's EOS ids
    ignore_eos: bool = False  # keep generating past the model's EOS ids (benchmarks, parity tests)

    def __post_init__(self) -> None:
        _check(isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
               "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        _check(_finite(self.temperature) and self.temperature >= 0, "temperature", "a number >= 0", self.temperature)
        _check(isinstance(self.top_k, int) and self.top_k >= 0, "top_k", "an integer >= 0", self.top_k)
        _check(_finite(self.top_p) and 0 < self.top_p <= 1, "top_p", "a number in (0, 1]", self.top_p)
        _check(_finite(self.repetition_penalty) and self.repetition_penalty > 0,
               "repetition_penalty", "a number > 0", self.repetition_penalty)
        _check(self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0),
               "seed", "an integer >= 0 or None", self.seed)
        _check(all(isinstance(s, str) and s for s in self.stop), "stop", "non-empty strings", self.stop)
        _check(all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids),
               "stop_token_ids", "integers >= 0", self.stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def with_(self, **changes) -> GenerationConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_defaults(cls, defaults: dict | None, **overrides) -> GenerationConfig:
        """Manifest `generation` defaults, then the caller's non-None overrides."""
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in (defaults or {}).items() if k in known}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check(ok: bool, name: str, expected: str, actual) -> None:
    if not ok:
        raise ConfigError(f"GenerationConfig.{name} must be {expected}, got {actual!r}")
