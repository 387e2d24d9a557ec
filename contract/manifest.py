"""`hoe_config.json`, the exported folder's runtime contract (docs/FORMAT.md): write, read, hash, swap experts.

Torch-free (numpy, safetensors and hoe.core's torch-free modules only), so the runtime can use it:

    read_manifest(folder) -> dict                  the parsed JSON, unchecked
    check_manifest(manifest)                       format version and required sections (export and runtime)
    load_manifest(folder, verify=True) -> dict     read, check structure, check every sha256
    refresh_hashes(folder) -> dict                 recompute `sha256` after files changed
    swap_experts(folder, ckpt_dir) -> dict         install another HoE checkpoint's experts/routers
    save_packed(folder, packed)                    packing.pack's tensors -> the experts/routers files
    read_packed(folder, manifest) -> dict          the folder's packed tensors, checked against the graph inputs
    read_checkpoint_tensors(folder) -> dict        the folder's packed tensors as checkpoint tensors
    input_specs(manifest, names) -> [TensorSpec]   the declared specs of some graph inputs
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from hoe.core import names, packing
from hoe.core.atomic import atomic_write_text, link_or_copy, staged_folder
from hoe.core.config import HoEConfig, sha256_file
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError
from hoe.core.identity import check_same_base
from hoe.core.packing import SiteGroup

from .io_spec import TensorSpec, bind_shapes

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # what the exporter writes; 2: experts/routers packed per site group (hoe.core.packing)
FORMAT_VERSIONS = (FORMAT_VERSION,)  # what this hoe reads
# What the graph inside a folder is, as `model.graph_revision` (same folder format, different graph): 1 or absent
# = standard ops only, before graph targets; 2 = graph targets (fused onnxruntime graph) and weight precisions;
# 3 = linears that read one input packed into one product (export/projections.py); 4 = an int8 table on the
# absmax/127 grid and block offsets (export/quantize.py: the reference re-quantizes, so the grid must match);
# 5 = rotary inside hoe's Attention op (--attention-kernel: no RotaryEmbedding nodes); 6 = the RMSNorm before a
# product as its prologue (--linear-kernel: export/linear_kernel.py); 7 = a SiLU MLP's silu(gate)·up as the
# gate/up product's epilogue (--linear-kernel).
# Caches of our own exports (demo, bench base-ort) are redone when theirs is not this one.
GRAPH_REVISION = 7


def is_current(manifest: Any) -> bool:
    """Whether a manifest is one this hoe reads and its graph was made by the current exporter (GRAPH_REVISION)."""
    return (isinstance(manifest, dict) and manifest.get("format_version") in FORMAT_VERSIONS
            and (manifest.get("model") or {}).get("graph_revision") == GRAPH_REVISION)
MANIFEST_FILE, VALIDATION_FILE = "hoe_config.json", "validation.json"
MODEL_FILE, DATA_FILE = "model.onnx", "model.onnx.data"
EXPERTS_FILE, ROUTERS_FILE, HOE_FILE = "experts.safetensors", "routers.safetensors", "hoe.json"
UNHASHED = (MANIFEST_FILE, VALIDATION_FILE)
# Sections a reader needs; the exporter also writes `generation`, `tools`, `sha256` and `source`.
REQUIRED = ("format_version", "model", "architecture", "inputs", "outputs", "kv_cache", "hoe", "files", "tokens")


# ---------------------------------------------------------------------------- hashing


def folder_hashes(folder: str | os.PathLike) -> dict[str, str]:
    """sha256 of every regular file of the folder except the manifest and validation.json."""
    folder = Path(folder)
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name not in UNHASHED}


def verify_hashes(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Raise CheckpointError when a file listed under `sha256` is missing or differs."""
    folder = Path(folder)
    hashes = manifest.get("sha256")
    if not isinstance(hashes, dict) or not hashes:
        raise CheckpointError(f"{folder / MANIFEST_FILE} has no sha256 section (got {hashes!r}); expected the sha256 "
                              "of every file: re-export, or skip verification explicitly (--no-verify, verify=False)")
    unhashed = [n for n in named_files(manifest) if n not in hashes]
    if unhashed:
        raise CheckpointError(f"{folder}: files {unhashed} are named in {MANIFEST_FILE} but have no sha256 entry; "
                              "expected every file hashed")
    for name, expected in hashes.items():
        if name in UNHASHED:
            continue
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: file {name} listed in {MANIFEST_FILE} sha256 is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 mismatch, expected {expected} ({MANIFEST_FILE}), got {actual}; "
                                  "the file was changed or damaged after export")


# ---------------------------------------------------------------------------- write / read


def named_files(manifest: dict[str, Any]) -> list[str]:
    """Every file name the manifest points at (model, external data, `files`)."""
    model = manifest.get("model") or {}
    names_ = [model.get("file"), model.get("external_data"), *(manifest.get("files") or {}).values()]
    return [n for n in names_ if n]


def check_inside(folder: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Every named file is a relative name inside the folder: an absolute path or `..` would load a file that
    no hash of this folder covers (a symlink inside the folder is fine: its content is what gets hashed)."""
    for name in named_files(manifest):
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{MANIFEST_FILE} names the file {name!r}; expected a file name inside {folder}")


def hoe_section(config: HoEConfig | None, expert_inputs: list[str], router_inputs: list[str],
                groups: list[SiteGroup]) -> dict[str, Any]:
    """The manifest's `hoe` section. `enabled` is false for a plain base graph (no router_mix, no experts)."""
    enabled = bool(expert_inputs)
    if config is None:
        return {"enabled": False, "objectives": [], "expert_names": [], "expert_prefs": [], "anchors": [],
                "n_active": 0, "n_route": 0, "rank": 0, "n_experts": 0, "n_routers": 0, "target_modules": [],
                "expert_inputs": [], "router_inputs": [], "groups": []}
    return {"enabled": enabled, "objectives": list(config.objectives), "expert_names": list(config.expert_names),
            "expert_prefs": config.expert_prefs, "anchors": config.anchors, "n_active": config.n_active,
            "n_route": config.n_route, "rank": config.rank, "n_experts": config.n_experts,
            "n_routers": config.n_routers, "target_modules": list(config.target_modules),
            "expert_inputs": list(expert_inputs), "router_inputs": list(router_inputs),
            "groups": [g.to_dict() for g in groups]}


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
    if version not in FORMAT_VERSIONS:
        raise ConfigError(f"{MANIFEST_FILE} format_version {version!r} is not one this hoe reads (expected one of "
                          f"{list(FORMAT_VERSIONS)}); update hoe or re-export")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ConfigError(f"{MANIFEST_FILE} lacks sections {missing}; expected all of {list(REQUIRED)}")


def read_manifest(folder: str | os.PathLike) -> Any:
    """The parsed `folder/hoe_config.json` (unchecked); CheckpointError / ConfigError when absent or not JSON."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if folder.is_file():
        raise CheckpointError(f"expected an exported folder (holding {MANIFEST_FILE}), got the file {folder}; "
                              f"pass its folder {folder.parent}")
    if not folder.is_dir():
        raise CheckpointError(f"exported folder not found: {folder}")
    if not path.is_file():
        raise CheckpointError(f"{folder} is not an exported HoE folder: {MANIFEST_FILE} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from e


def load_manifest(folder: str | os.PathLike, verify: bool = False) -> dict[str, Any]:
    """Read `folder/hoe_config.json` and check its structure; with `verify`, the sha256 of every listed file too."""
    manifest = read_manifest(folder)
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


# ---------------------------------------------------------------------------- packed experts


def groups_of(manifest: dict[str, Any]) -> list[SiteGroup]:
    """The site groups the graph reads its experts in (manifest `hoe.groups`)."""
    return [SiteGroup.from_dict(g) for g in manifest["hoe"].get("groups", [])]


BAKED = "baked"  # quantization.experts.storage of a graph holding its experts (hoe export --bake-experts)


def experts_baked(quantization: dict[str, Any] | None) -> bool:
    """Whether a manifest's `quantization` section says the graph holds its experts and routers itself."""
    return ((quantization or {}).get("experts") or {}).get("storage") == BAKED


def save_packed(folder: Path, packed: dict[str, np.ndarray]) -> dict[str, str]:
    """Packed experts/routers (packing.pack) -> the folder's experts and routers safetensors."""
    from safetensors.numpy import save_file

    for file, prefix in ((EXPERTS_FILE, names.EXPERTS_PREFIX), (ROUTERS_FILE, names.ROUTERS_PREFIX)):
        part = {n: v for n, v in packed.items() if n.startswith(prefix)}
        save_file(part, str(Path(folder) / file), metadata={"format": "np"})
    return {"experts": EXPERTS_FILE, "routers": ROUTERS_FILE}


def read_packed(folder: str | os.PathLike, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The folder's experts and routers by graph-input name ({} for a plain base export), checked against the
    declared inputs: every one present, its dtype, and its shape with the `hoe` section's E, r and K."""
    folder, hoe = Path(folder), manifest["hoe"]
    if not hoe.get("enabled", True):
        return {}
    arrays = {n: v for key in ("experts", "routers") for n, v in _read_numpy(folder / manifest["files"][key]).items()}
    check_finite(folder, arrays, masked={packing.router_bias(g) for g in groups_of(manifest)})
    specs = input_specs(manifest, hoe["expert_inputs"] + hoe["router_inputs"])
    try:
        bind_shapes(specs, {n: a.shape for n, a in arrays.items()}, known=packed_sizes(manifest))
    except ShapeMismatchError as e:
        raise CheckpointError(f"experts/routers files of {folder} do not fit the graph: {e}") from e
    for spec in specs:
        if arrays[spec.name].dtype != np.dtype(spec.dtype):
            raise CheckpointError(f"{spec.name}: the graph takes {spec.dtype}, the file holds "
                                  f"{arrays[spec.name].dtype}")
    return {s.name: arrays[s.name] for s in specs}


def packed_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """E, r and K of the experts/routers the folder holds (its `hoe` section)."""
    hoe = manifest.get("hoe") or {}
    try:
        return {"experts": int(hoe["n_experts"]), "rank": int(hoe["rank"]), "routers": int(hoe["n_routers"])}
    except KeyError as e:
        raise ConfigError(f"{MANIFEST_FILE} 'hoe' lacks {e.args[0]!r}; expected n_experts, rank, n_routers") from e


def read_checkpoint_tensors(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """The exported folder's experts and routers as HoE checkpoint tensors (canonical names, float32), e.g.
    for the PyTorch reference or a weight merge. The scaling comes folded into lora_B (hoe.core.packing)."""
    manifest = load_manifest(folder)
    if not manifest["hoe"].get("enabled", True):
        raise ConfigError(f"{folder} is a plain base export: it holds no experts")
    sizes = packed_sizes(manifest)
    return packing.unpack(read_packed(folder, manifest), groups_of(manifest), sizes["experts"], sizes["rank"],
                          sizes["routers"])


# ---------------------------------------------------------------------------- expert swap


def swap_experts(folder: str | os.PathLike, ckpt_dir: str | os.PathLike, check=None) -> dict[str, Any]:
    """Install the experts and routers of HoE checkpoint `ckpt_dir` into exported `folder`, no re-export.

    E, r and K may change; the adapted modules, their feature sizes and the base model (hoe.json `base`
    identity) must not; every tensor must be finite. The new set is staged beside the folder (unchanged
    files hard-linked, new experts/routers/hoe.json, manifest with fresh sha256; the stale validation.json
    left out), `check(staged_folder)` may refuse it by raising, and only then does it replace the folder
    in one rename (hoe.core.atomic): an interrupt or a refusal leaves the old set whole.
    """
    folder, ckpt_dir = Path(folder), Path(ckpt_dir)
    manifest = load_manifest(folder, verify=True)
    if not manifest["hoe"].get("enabled", True):
        raise ConfigError(f"{folder} is a plain base export (no expert inputs); re-export it with experts")
    config = HoEConfig.load(ckpt_dir / HOE_FILE)
    _check_same_base(folder, manifest, ckpt_dir, config)
    old = manifest["hoe"]
    if sorted(config.target_modules) != sorted(old["target_modules"]):
        diff = sorted(set(config.target_modules) ^ set(old["target_modules"]))
        raise ShapeMismatchError(f"{ckpt_dir} adapts other modules than the graph: differs on {diff[:5]}")
    tensors = {}
    for file, wanted in ((EXPERTS_FILE, names.expert_names(config.target_modules)),
                         (ROUTERS_FILE, names.router_names(config.target_modules))):
        part = _read_numpy(ckpt_dir / file)
        _check_names(ckpt_dir / file, part, wanted)
        check_finite(ckpt_dir / file, part)
        tensors.update(part)
    _check_dims(ckpt_dir, config, tensors)
    groups = groups_of(manifest)
    dtype = input_specs(manifest, old["expert_inputs"][:1])[0].dtype
    replaced = {EXPERTS_FILE, ROUTERS_FILE, HOE_FILE, MANIFEST_FILE, VALIDATION_FILE}
    with staged_folder(folder, replace=True) as tmp:
        for entry in folder.iterdir():
            if entry.name not in replaced:
                (shutil.copytree(entry, tmp / entry.name, copy_function=link_or_copy) if entry.is_dir()
                 else link_or_copy(entry, tmp / entry.name))
        packed = packing.pack(tensors, groups, dtype)
        save_packed(tmp, packed)
        if experts_baked(manifest.get("quantization")):
            from hoe.export.baked import rebake_folder  # the graph holds them: new initializers (export extra)

            rebake_folder(tmp, manifest, packed, groups)
        shutil.copyfile(ckpt_dir / HOE_FILE, tmp / HOE_FILE)
        manifest["hoe"] = hoe_section(config, old["expert_inputs"], old["router_inputs"], groups)
        manifest = write_manifest(tmp, manifest)
        if check is not None:
            check(tmp)
    log.info("installed experts of %s into %s (E=%d, r=%d, K=%d)", ckpt_dir, folder, config.n_experts,
             config.rank, config.n_routers)
    return manifest


def check_finite(where, tensors: dict[str, np.ndarray], masked=frozenset()) -> None:
    """CheckpointError naming the tensor that holds NaN or inf (a NaN expert silently empties the output).
    `masked`: packed router biases, whose -inf entries are routers.mask folded in (hoe.core.packing)."""
    for name, value in tensors.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = np.isnan(value) | np.isposinf(value) | (np.isneginf(value) if name not in masked else False)
        if bad.any():
            raise CheckpointError(f"{where}: {name} must be finite, got {int(bad.sum())} NaN/inf of {value.size} "
                                  "values")


def _check_same_base(folder: Path, manifest: dict, ckpt_dir: Path, config: HoEConfig) -> None:
    """The checkpoint was made for the base the graph bakes in (hoe.json `base` of both)."""
    name = manifest["files"].get("hoe")
    if not name or not (folder / name).is_file():
        raise CheckpointError(f"{folder} records no base identity ({HOE_FILE} missing): cannot check that "
                              f"{ckpt_dir} belongs to its base; re-export with the checkpoint instead")
    expected = HoEConfig.load(folder / name).base
    if not config.base:
        raise CheckpointError(f"{ckpt_dir / HOE_FILE} records no base identity; expected the export's base "
                              f"({expected.get('architecture')}, weights {str(expected.get('weights_sha256'))[:16]})")
    check_same_base(expected, config.base, f"{folder}'s {HOE_FILE}", f"{ckpt_dir / HOE_FILE}")


def _read_numpy(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable float safetensors file: {e}") from e


def _check_names(path: Path, tensors: dict, wanted: list[str]) -> None:
    if set(tensors) != set(wanted):
        missing, unexpected = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
        raise CheckpointError(f"{path}: tensor names do not match hoe.json's target modules: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def _check_dims(ckpt_dir: Path, config: HoEConfig, tensors: dict[str, np.ndarray]) -> None:
    """E, r and K of the tensors are those hoe.json declares (packing checks every shape against them)."""
    k, e = tensors[names.ROUTER_MASK].shape
    r = tensors[names.lora_a(config.target_modules[0])].shape[1]
    declared = {"experts": config.n_experts, "rank": config.rank, "routers": config.n_routers}
    for dim, value in {"experts": e, "rank": r, "routers": k}.items():
        if declared[dim] != value:
            raise ShapeMismatchError(f"{ckpt_dir}: tensors have {dim}={value}, hoe.json says {declared[dim]}")
