"""`hoe_config.json`, the exported folder's runtime contract (docs/FORMAT.md): write, read, hash, swap experts.

Torch-free (numpy, safetensors and hoe.core's torch-free modules only), so the runtime can use it:

    load_manifest(folder, verify=True) -> dict     read, check structure, check every sha256
    refresh_hashes(folder) -> dict                 recompute `sha256` after files changed
    swap_experts(folder, ckpt_dir) -> dict         install another HoE checkpoint's experts/routers
    input_specs(manifest, names) -> [TensorSpec]   the declared specs of some graph inputs
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hoe.core.config import HoEConfig, atomic_write_text
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError

from .io_spec import TensorSpec, bind_shapes

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE, VALIDATION_FILE = "hoe_config.json", "validation.json"
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"
EXPERTS_FILE, ROUTERS_FILE, HOE_FILE = "experts.safetensors", "routers.safetensors", "hoe.json"
UNHASHED = (MANIFEST_FILE, VALIDATION_FILE)
REQUIRED = ("format_version", "model", "architecture", "inputs", "outputs", "kv_cache", "hoe", "files",
            "tokens", "generation", "tools", "sha256")


# ---------------------------------------------------------------------------- hashing


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def folder_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file of the folder except the manifest and validation.json."""
    folder = Path(folder)
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in UNHASHED}


def verify_hashes(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Raise CheckpointError when a file listed under `sha256` is missing or differs."""
    folder = Path(folder)
    for name, expected in manifest["sha256"].items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: {name} is listed in {MANIFEST_FILE} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 is {actual}, {MANIFEST_FILE} says {expected}")


# ---------------------------------------------------------------------------- write / read


def hoe_section(config: HoEConfig | None, expert_inputs: list[str], router_inputs: list[str]) -> dict[str, Any]:
    """The manifest's `hoe` section. `enabled` is false for a plain base graph (no router_mix, no experts)."""
    enabled = bool(expert_inputs)
    if config is None:
        return {"enabled": False, "objectives": [], "expert_names": [], "expert_prefs": [], "anchors": [],
                "n_active": 0, "n_route": 0, "rank": 0, "n_experts": 0, "n_routers": 0, "target_modules": [],
                "expert_inputs": [], "router_inputs": []}
    return {"enabled": enabled, "objectives": list(config.objectives), "expert_names": list(config.expert_names),
            "expert_prefs": config.expert_prefs, "anchors": config.anchors, "n_active": config.n_active,
            "n_route": config.n_route, "rank": config.rank, "n_experts": config.n_experts,
            "n_routers": config.n_routers, "target_modules": list(config.target_modules),
            "expert_inputs": list(expert_inputs), "router_inputs": list(router_inputs)}


def write_manifest(folder: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, Any]:
    """Hash every file of `folder` into `manifest["sha256"]`, then write `hoe_config.json` atomically."""
    folder = Path(folder)
    manifest = dict(manifest, sha256=folder_hashes(folder))
    check_manifest(manifest)
    atomic_write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    return manifest


def check_manifest(manifest: Any) -> None:
    """Structure only: a JSON object of our format version with every required section."""
    if not isinstance(manifest, dict):
        raise ConfigError(f"{MANIFEST_FILE} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"{MANIFEST_FILE} format_version must be {FORMAT_VERSION}, got {version!r}")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ConfigError(f"{MANIFEST_FILE} lacks sections {missing}; expected all of {list(REQUIRED)}")


def load_manifest(folder: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Read `folder/hoe_config.json`; with `verify`, check the sha256 of every listed file too."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an exported HoE folder: {MANIFEST_FILE} not found")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from e
    check_manifest(manifest)
    if verify:
        verify_hashes(folder, manifest)
    return manifest


def refresh_hashes(folder: str | os.PathLike) -> dict[str, Any]:
    """Recompute `sha256` of every file (after experts/routers were replaced) and rewrite the manifest."""
    return write_manifest(folder, load_manifest(folder))


def input_specs(manifest: dict[str, Any], input_names: list[str]) -> list[TensorSpec]:
    """The manifest's declared specs of `input_names` (ConfigError if one is not a graph input)."""
    inputs = manifest["inputs"]
    unknown = [n for n in input_names if n not in inputs]
    if unknown:
        raise ConfigError(f"{unknown[:5]} are not inputs of this graph ({len(unknown)} unknown)")
    return [TensorSpec(n, inputs[n]["dtype"], tuple(inputs[n]["shape"])) for n in input_names]


# ---------------------------------------------------------------------------- expert swap


def swap_experts(folder: str | os.PathLike, ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Install the experts and routers of HoE checkpoint `ckpt_dir` into exported `folder`, no re-export.

    E, r and K may change; the adapted modules and their feature sizes must not. Tensors are cast to
    the graph's input dtypes, `hoe.json` and the manifest's `hoe` section follow, sha256 are refreshed
    and the now stale `validation.json` is removed. Each file is replaced atomically, the manifest last.
    """
    from safetensors.numpy import save_file

    folder, ckpt_dir = Path(folder), Path(ckpt_dir)
    manifest = load_manifest(folder)
    if not manifest["hoe"].get("enabled", True):
        raise ConfigError(f"{folder} is a plain base export (no expert inputs); re-export it with experts")
    config = HoEConfig.load(ckpt_dir / HOE_FILE)
    old = manifest["hoe"]
    if sorted(config.target_modules) != sorted(old["target_modules"]):
        diff = sorted(set(config.target_modules) ^ set(old["target_modules"]))
        raise ShapeMismatchError(f"{ckpt_dir} adapts other modules than the graph: differs on {diff[:5]}")
    groups = {EXPERTS_FILE: old["expert_inputs"], ROUTERS_FILE: old["router_inputs"]}
    staged = {}
    for file, names in groups.items():
        tensors = _read_numpy(ckpt_dir / file)
        specs = input_specs(manifest, names)
        _check_names(ckpt_dir / file, tensors, names)
        dims = bind_shapes(specs, {n: t.shape for n, t in tensors.items()})
        _check_dims(ckpt_dir, config, dims)
        staged[file] = {s.name: np.ascontiguousarray(tensors[s.name].astype(s.dtype)) for s in specs}
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".swap."))
    try:
        for file, tensors in staged.items():
            save_file(tensors, str(tmp / file), metadata={"format": "np"})
        shutil.copyfile(ckpt_dir / HOE_FILE, tmp / HOE_FILE)
        for file in (*staged, HOE_FILE):
            os.replace(tmp / file, folder / file)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    (folder / VALIDATION_FILE).unlink(missing_ok=True)
    manifest["hoe"] = hoe_section(config, old["expert_inputs"], old["router_inputs"])
    log.info("installed experts of %s into %s (E=%d, r=%d, K=%d)", ckpt_dir, folder, config.n_experts,
             config.rank, config.n_routers)
    return write_manifest(folder, manifest)


def _read_numpy(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable float safetensors file: {e}") from e


def _check_names(path: Path, tensors: dict, names: list[str]) -> None:
    if set(tensors) != set(names):
        missing, unexpected = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
        raise CheckpointError(f"{path}: tensor names do not match the graph inputs: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def _check_dims(ckpt_dir: Path, config: HoEConfig, dims: dict[str, int]) -> None:
    declared = {"experts": config.n_experts, "rank": config.rank, "routers": config.n_routers}
    for dim, value in dims.items():
        if dim in declared and declared[dim] != value:
            raise ShapeMismatchError(f"{ckpt_dir}: tensors have {dim}={value}, hoe.json says {declared[dim]}")
