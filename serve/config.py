"""Serving settings: one dataclass per concern (the engine's scheduler, the HTTP server), saved as JSON."""

from __future__ import annotations

from dataclasses import dataclass, field

from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError


@dataclass
class EngineConfig(JsonConfig):
    """The continuous-batching scheduler of one model on one device."""

    max_batch: int = 8  # rows decoded together at most; more requests wait in the queue
    max_queue: int = 64  # requests waiting for a row at most; beyond, new ones get 429 + Retry-After
    retry_after_s: int = 1  # the Retry-After the server suggests when the queue is full
    idle_wait_s: float = 0.5  # the scheduler thread sleeps at most this long when there is nothing to do

    def __post_init__(self) -> None:
        for name, lo in (("max_batch", 1), ("max_queue", 0), ("retry_after_s", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ConfigError(f"EngineConfig.{name} must be an integer >= {lo}, got {value!r}")


@dataclass
class ServeConfig(JsonConfig):
    """`hoe serve`: where to listen, what to call the model, and its engine."""

    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the id clients send as "model"; None -> the exported folder's name
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if isinstance(self.engine, dict):
            self.engine = EngineConfig(**self.engine)
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"ServeConfig.port must be an integer in [0, 65535], got {self.port!r}")
