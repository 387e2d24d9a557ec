"""The exported folder's contract, `hoe_config.json` (docs/FORMAT.md), read and checked.

The runtime reads only this manifest: file names, graph input/output names, KV cache naming,
anchors and token ids all come from it, never from guesses.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hoe.core.errors import CheckpointError, ConfigError

from .manifest import (
    MANIFEST_FILE,
    VALIDATION_FILE,
    check_inside,
    check_manifest,
    experts_baked,
    read_manifest,
    read_packed,
    verify_hashes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Manifest:
    """A parsed `hoe_config.json` plus the folder it lives in."""

    folder: Path
    data: dict[str, Any]

    # -- loading ---------------------------------------------------------------------------------
    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> Manifest:
        """Read and check the manifest; with `verify`, check every file's sha256 too."""
        folder = Path(folder)
        data = read_manifest(folder)
        manifest = cls(folder, data)
        manifest.check()
        if verify:
            manifest.verify_files()
        manifest.warn_if_failed()
        return manifest

    def warn_if_failed(self) -> None:
        """A folder whose validation.json says it failed parity is served, with a warning."""
        path = self.folder / VALIDATION_FILE
        if not path.is_file():
            return
        try:
            passed = json.loads(path.read_text(encoding="utf-8")).get("passed")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            passed = None
        if passed is not True:
            log.warning("%s: %s says passed=%r: this export did not reproduce PyTorch within tolerance "
                        "(see that file; re-export or `hoe swap-experts --validate`)", self.folder, VALIDATION_FILE,
                        passed)

    def check(self) -> None:
        """Structure: known format version, required sections (check_manifest), files present."""
        check_manifest(self.data)
        for key in ("anchors", "objectives", "expert_inputs", "router_inputs") if self.hoe_enabled else ():
            if key not in self.hoe:
                raise ConfigError(f"{MANIFEST_FILE} 'hoe' lacks {key!r}")
        check_inside(self.folder, self.data)
        for name in self.required_files():
            if not (self.folder / name).is_file():
                raise CheckpointError(f"{self.folder}: file {name} named in {MANIFEST_FILE} is missing")

    def required_files(self) -> list[str]:
        model = self.data["model"]
        files = [model["file"]] + ([model["external_data"]] if model.get("external_data") else [])
        files += [self.files[k] for k in ("experts", "routers") if self.files.get(k)]
        return files

    def verify_files(self) -> None:
        """Every file listed under `sha256` exists and has that digest."""
        verify_hashes(self.folder, self.data)

    # -- typed views ---------------------------------------------------------------------------------
    @property
    def arch(self) -> dict[str, Any]:
        return self.data["architecture"]

    @property
    def hoe(self) -> dict[str, Any]:
        return self.data["hoe"]

    @property
    def files(self) -> dict[str, str]:
        return self.data["files"]

    @property
    def tokens(self) -> dict[str, Any]:
        return self.data["tokens"]

    @property
    def inputs(self) -> dict[str, dict]:
        return self.data["inputs"]

    @property
    def outputs(self) -> dict[str, dict]:
        return self.data["outputs"]

    @property
    def num_layers(self) -> int:
        return int(self.arch["num_layers"])

    @property
    def context_length(self) -> int:
        return int(self.arch["max_position_embeddings"])

    @property
    def vocab_size(self) -> int:
        return int(self.arch["vocab_size"])

    @property
    def hoe_enabled(self) -> bool:
        """False for a plain base export (no router_mix, no experts): no preference is needed."""
        return bool(self.hoe.get("enabled", True))

    @property
    def objectives(self) -> list[str]:
        return list(self.hoe["objectives"])

    @property
    def anchors(self) -> list[list[float]]:
        return [list(map(float, a)) for a in self.hoe["anchors"]]

    @property
    def n_route(self) -> int:
        return int(self.hoe.get("n_route") or min(len(self.objectives), len(self.anchors)))

    @property
    def eos_token_ids(self) -> list[int]:
        ids = self.tokens.get("eos_token_ids")
        if ids is None:
            ids = self.tokens.get("eos_token_id")
        return [int(i) for i in (ids if isinstance(ids, list) else [] if ids is None else [ids])]

    @property
    def pad_token_id(self) -> int:
        pad = self.tokens.get("pad_token_id")
        if pad is None:
            pad = (self.eos_token_ids or [0])[0]
        return int(pad)

    @property
    def generation(self) -> dict[str, Any]:
        return self.data.get("generation") or {}

    @property
    def source(self) -> dict[str, Any]:
        """Where the export came from (`{"base": ..., "hoe": ...}`), if the exporter recorded it."""
        return self.data.get("source") or {}

    def kv_names(self, layer: int) -> tuple[str, str, str, str]:
        """(past key, past value, present key, present value) graph names of one layer."""
        kv = self.data["kv_cache"]
        return tuple(kv[k] % layer for k in ("past_key", "past_value", "present_key", "present_value"))

    def kv_spec(self) -> tuple[str, int, int]:
        """(dtype, kv heads, row width) of the cache, read from the layer-0 past input: the width is the head dim,
        or head dim + 4 for an int8 cache (rows of D values and their scale, hoe.contract.kv_int8)."""
        spec = self.inputs[self.kv_names(0)[0]]
        shape = spec["shape"]
        return spec["dtype"], int(shape[1]), int(shape[3])

    @property
    def experts_baked(self) -> bool:
        """The graph holds its experts and routers as initializers (`hoe export --bake-experts`)."""
        return experts_baked(self.data.get("quantization"))

    def hoe_tensors(self) -> dict[str, np.ndarray]:
        """The experts and routers the graph takes as inputs, by name ({} for a plain base export and for one that
        holds them baked in), checked against the declared inputs: every one present, its dtype, and its shape
        with the E, r and K of the `hoe` section."""
        return {} if self.experts_baked else read_packed(self.folder, self.data)

    def path(self, key: str) -> Path | None:
        """Absolute path of a file named under `files` (None when the export has none)."""
        name = self.files.get(key)
        return self.folder / name if name else None

