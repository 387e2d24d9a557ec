"""Identity of a base model, so a checkpoint made for one base is refused by another."""

from __future__ import annotations

import hashlib
import json

from .errors import CheckpointError

IDENTITY_KEYS = ("architecture", "config_sha256", "shapes_sha256", "weights_sha256")

_CONFIG_KEYS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size", "head_dim", "rope_theta", "tie_word_embeddings")


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def weights_fingerprint(model) -> str:
    """sha256 over a few values of every parameter, cast to fp16 (stable across fp32/fp16 copies)."""
    import torch

    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        flat = p.detach().flatten()
        sample = torch.cat([flat[:8], flat[-8:]]).to(torch.float16).cpu().numpy()
        h.update(name.encode())
        h.update(sample.tobytes())
    return h.hexdigest()


def base_identity(model) -> dict:
    """{"architecture", "config_sha256", "shapes_sha256", "weights_sha256"} of a causal LM."""
    cfg = model.config.to_dict()
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    return {
        "architecture": type(model).__name__,
        "config_sha256": _sha({k: cfg.get(k) for k in _CONFIG_KEYS}),
        "shapes_sha256": _sha(shapes),
        "weights_sha256": weights_fingerprint(model),
    }


def check_same_base(expected: dict, actual: dict, expected_where: str, actual_where: str) -> None:
    """CheckpointError when two base identities (torch-free dicts) differ on a key both record."""
    for key in IDENTITY_KEYS:
        if key in expected and key in actual and expected[key] != actual[key]:
            raise CheckpointError(
                f"made for another base model: {key} is {str(expected[key])[:16]} in {expected_where}, "
                f"{str(actual[key])[:16]} in {actual_where}")
