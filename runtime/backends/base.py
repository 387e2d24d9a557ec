"""The backend interface, in the style of Polygraphy's runners.

    backend = create_backend("ort", manifest, BackendConfig(threads=1))
    with backend:                        # activate() ... deactivate()
        outputs = backend.infer(feed)    # one full forward: graph names in, graph names out (numpy)

For generation a backend also keeps per-generator decode state (its KV cache, its bindings):

    state = backend.new_state(batch)
    logits = backend.step(state, input_ids, attention_mask, position_ids, router_mix)  # [B, V]

Backends that support continuous batching (rows joining and leaving a running batch, hoe.serve) also
hand a state's K/V out as host arrays and build a state from such arrays; the row surgery itself
(select, left-pad, concatenate, trim) is numpy in hoe.runtime.kv_rows:

    kv = backend.read_kv(state)          # 2 * L arrays [B, H, P, D]: layer 0 key, layer 0 value, ...
    state = backend.state_from_kv(kv)    # a state whose past is `kv` (batch and past_length from the shape)

Expert and router tensors are loaded once at activate() and shared by every state; a state is
owned by one generator, so several generators may run on one backend from several threads.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from hoe.core.config import JsonConfig
from hoe.core.errors import BackendError


@dataclass
class BackendConfig(JsonConfig):
    """How to run an exported folder."""

    name: str = "ort"  # registered backend: "ort" (onnxruntime), "torch" (PyTorch reference), others plug in
    providers: list | None = None  # onnxruntime execution providers, names or (name, options); None -> default
    threads: int | None = None  # intra-op threads; None -> the library's default
    spinning: bool | None = None  # ORT intra-op spin-waiting; set False when timing next to another process
    base: str | None = None  # torch backend: Hugging Face base folder (default: manifest "source.base")
    hoe: str | None = None  # torch backend: HoE checkpoint folder (default: manifest "source.hoe", else the export)
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific settings (e.g. a TensorRT cache dir)

    def __post_init__(self) -> None:
        from hoe.core.errors import ConfigError

        t = self.threads
        if t is not None and (not isinstance(t, int) or isinstance(t, bool) or t < 1):
            raise ConfigError(f"threads must be an integer >= 1 or None (the library's default), got {t!r}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"backend name must be a non-empty string, got {self.name!r}")


class DecodeState:
    """Per-generator state a backend keeps between steps (KV cache, bindings)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.past_length = 0  # tokens held in the KV cache


class Backend(abc.ABC):
    """A runner for one exported model: activate / infer / deactivate, plus stateful decode steps."""

    name: ClassVar[str] = "?"

    def __init__(self, manifest, config: BackendConfig) -> None:
        self.manifest = manifest
        self.config = config
        self.is_active = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def activate(self) -> Backend:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Backend:
        return self.activate()

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def _require_active(self) -> None:
        if not self.is_active:
            raise BackendError(f"backend {self.name!r} is not active; call activate() or use it in a with-block")

    # -- what each backend implements ---------------------------------------------------------------
    @abc.abstractmethod
    def _activate(self) -> None:
        """Load the model and the expert/router tensors."""

    @abc.abstractmethod
    def _deactivate(self) -> None:
        """Release them."""

    @abc.abstractmethod
    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One forward pass. feed: graph inputs by name (experts/routers may be left out: the loaded
        ones are used) -> every graph output by name."""

    @abc.abstractmethod
    def new_state(self, batch: int) -> DecodeState:
        """An empty KV cache for `batch` rows."""

    @abc.abstractmethod
    def step(self, state: DecodeState, input_ids: np.ndarray, attention_mask: np.ndarray,
             position_ids: np.ndarray, router_mix: np.ndarray) -> np.ndarray:
        """Run T new tokens through the model and keep their K/V in `state`.

        input_ids: [B, T] int64, attention_mask: [B, P+T] int64, position_ids: [B, T] int64,
        router_mix: [B, K] float32 -> logits of the last position [B, V] float32.
        """

    # -- row-level KV (continuous batching); optional --------------------------------------------------
    @property
    def supports_row_kv(self) -> bool:
        """Whether this backend implements read_kv / state_from_kv."""
        return type(self).read_kv is not Backend.read_kv and type(self).state_from_kv is not Backend.state_from_kv

    def read_kv(self, state: DecodeState) -> list[np.ndarray]:
        """The K/V `state` holds, as host arrays: per layer key then value, each [B, H, P, D]."""
        raise BackendError(f"backend {self.name!r} has no row-level KV access (read_kv/state_from_kv); "
                           "continuous batching needs a backend that has, e.g. 'ort'")

    def state_from_kv(self, kv: list[np.ndarray]) -> DecodeState:
        """A decode state whose past is `kv` (as read_kv returns it): batch B and past_length P from the shape."""
        raise BackendError(f"backend {self.name!r} has no row-level KV access (read_kv/state_from_kv); "
                           "continuous batching needs a backend that has, e.g. 'ort'")

    def describe(self) -> dict[str, Any]:
        """What actually runs (for logs, results and reports)."""
        return {"backend": self.name}
