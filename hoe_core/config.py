"""Configuration dataclasses (torch-free), each saved as JSON.

`HoEConfig` is the identity card of a HoE checkpoint (`hoe.json`): what the experts and
routers are, which modules they adapt and which base model they belong to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text
from .errors import ConfigError

FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_objectives(objectives) -> None:
    """Objective names: a non-empty list of distinct, non-empty strings."""
    if not isinstance(objectives, list) or not objectives or any(not isinstance(o, str) or not o.strip()
                                                                  for o in objectives):
        raise ConfigError(f"objectives must be non-empty names, e.g. helpful,positive,concise; got {objectives!r}")
    dupes = sorted({o for o in objectives if objectives.count(o) > 1})
    if dupes:
        raise ConfigError(f"objective names must be distinct, got {dupes} more than once in {objectives}")


class JsonConfig:
    """Mixin: JSON round trip for a flat dataclass of JSON-able fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown fields {unknown}; expected a subset of {sorted(names)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{cls.__name__}: file not found: {path}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{cls.__name__}: {path} is not valid JSON ({e})") from e
        return cls.from_dict(data)


@dataclass
class HoEConfig(JsonConfig):
    """What a HoE checkpoint holds. Saved as `hoe.json` next to experts/routers safetensors."""

    objectives: list[str]  # m objective names, e.g. ["helpful", "positive", "concise"]
    expert_prefs: list[list[float]]  # [E][m] the preference each LoRA expert serves (one-hot for single-objective)
    anchors: list[list[float]]  # [K][m] anchor preference of each router expert
    target_modules: list[str]  # full module names adapted, e.g. "model.layers.0.self_attn.q_proj"
    rank: int  # common (padded) LoRA rank r
    n_active: int = 0  # N LoRA experts each router activates (nearest its anchor); 0 -> m
    n_route: int = 0  # anchors mixed per user preference; 0 -> m
    expert_names: list[str] = field(default_factory=list)  # E names, e.g. ["helpful", "positive", "concise"]
    base: dict[str, Any] = field(default_factory=dict)  # identity of the base model (see identity.py)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_objectives(self.objectives)
        m = len(self.objectives)
        for what, rows in (("expert_prefs", self.expert_prefs), ("anchors", self.anchors)):
            if not rows:
                raise ConfigError(f"{what} must have at least one row, got []")
            for i, row in enumerate(rows):
                if len(row) != m:
                    raise ConfigError(f"{what}[{i}] must have length {m} (objectives), got {len(row)}")
                if any(v < 0 for v in row) or abs(sum(row) - 1.0) > 1e-6:
                    raise ConfigError(f"{what}[{i}] must be a simplex point (>= 0, sum 1), got {row}")
        if self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {self.rank}")
        if not self.expert_names:
            self.expert_names = [f"expert{i}" for i in range(self.n_experts)]
        if len(self.expert_names) != self.n_experts:
            raise ConfigError(f"expert_names must have {self.n_experts} entries, got {len(self.expert_names)}")
        self.n_active = self.n_active or min(m, self.n_experts)
        self.n_route = self.n_route or min(m, self.n_routers)
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(f"hoe.json format_version {self.format_version} is not one we know ({FORMAT_VERSION})")

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    @property
    def n_experts(self) -> int:
        return len(self.expert_prefs)

    @property
    def n_routers(self) -> int:
        return len(self.anchors)
