"""Backend registry: a name -> a runner class, imported only when asked for.

Another backend plugs in with one call, e.g. `register_backend("trt", "hoe.runtime.backends.trt:TrtBackend")`.
"""

from __future__ import annotations

import importlib

from hoe.core.errors import BackendError

from .base import Backend, BackendConfig, DecodeState

_REGISTRY: dict[str, str] = {
    "ort": "hoe.runtime.backends.ort:OrtBackend",
    "torch": "hoe.runtime.backends.pytorch:TorchBackend",
    "trt": "hoe.runtime.backends.trt:TrtBackend",
}


def register_backend(name: str, target: str | type) -> None:
    """Make backend `name` available; `target` is a Backend subclass or "module:Class" (lazy import)."""
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def backend_class(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise BackendError(f"unknown backend {name!r}; expected one of {available_backends()}")
    target = _REGISTRY[name]
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    return target


def create_backend(manifest, config: BackendConfig | None = None) -> Backend:
    """An (inactive) backend for an exported folder's manifest."""
    config = config or BackendConfig()
    return backend_class(config.name)(manifest, config)


__all__ = ["Backend", "BackendConfig", "DecodeState", "available_backends", "backend_class", "create_backend",
           "register_backend"]
