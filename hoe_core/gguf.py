"""GGUF bases: a .gguf file (llama.cpp's format) -> a Hugging Face safetensors folder HoE can adapt.

    GGUF_FILE ─► architecture transformers reads from GGUF? ─► dequantise (transformers + gguf)
              ─► drop the GGUF quantiser ─► save_pretrained + tokenizer into a temporary folder
              ─► stamp (sha256 of the source and of every file) ─► rename to OUT_DIR

`convert_gguf` reuses OUT_DIR when its stamp names the same source file and every file is intact, so a
second call costs one hash of the GGUF. `resolve_base` lets `--base` take a .gguf: it converts once into
the cache (`$HOE_CACHE/gguf/`) and returns that folder. Nothing but GGUF and safetensors is read.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .atomic import atomic_write_text, staged_folder
from .config import sha256_file
from .errors import CheckpointError, UnsupportedModelError

log = logging.getLogger(__name__)

STAMP = "hoe_prepared.json"  # {"source": name, "source_sha256": ..., "sha256": {file: digest}}
MAGIC = b"GGUF"


def cache_dir() -> Path:
    return Path(os.environ.get("HOE_CACHE", Path.home() / ".cache" / "hoe"))


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def is_intact(folder: Path, source_sha256: str | None = None) -> bool:
    """Every file the stamp lists has its recorded sha256 (and the stamp names `source_sha256`, if given)."""
    stamp = folder / STAMP
    if not stamp.is_file():
        return False
    try:
        data = json.loads(stamp.read_text())
        hashes = data["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return False
    if source_sha256 is not None and data.get("source_sha256") != source_sha256:
        return False
    return all((folder / name).is_file() and sha256_file(folder / name) == digest for name, digest in hashes.items())


def gguf_architecture(gguf: Path) -> str:
    """`general.architecture` of a GGUF file, refused unless transformers can load that architecture."""
    from gguf import GGUFReader
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    try:
        field = GGUFReader(str(gguf)).fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (KeyError, ValueError, IndexError) as e:
        raise CheckpointError(f"{gguf} is not a readable GGUF file (general.architecture): {e}") from e
    readable = sorted(k for k in GGUF_CONFIG_MAPPING if k not in ("general", "tokenizer"))
    if arch not in readable:
        raise UnsupportedModelError(f"GGUF architecture {arch!r} cannot be read by transformers; "
                                    f"readable: {', '.join(readable)}")
    return arch


def convert_gguf(gguf_file: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """GGUF file -> Hugging Face fp32 safetensors folder `out_dir` (module docstring); returns `out_dir`.

    Refuses (before any work) a missing/non-GGUF input, an `out_dir` that holds the input, an architecture
    transformers cannot read, and an existing `out_dir` made from something else unless `force`.
    """
    gguf, out = Path(gguf_file), Path(out_dir)
    if not is_gguf(gguf):
        raise CheckpointError(f"{gguf} is not a GGUF file (missing, or no 'GGUF' magic bytes)")
    if out.resolve() in gguf.resolve().parents:
        raise CheckpointError(f"output folder {out} would contain its input {gguf}; choose another folder")
    digest = sha256_file(gguf)
    if is_intact(out, digest):
        log.info("%s already holds %s (intact), reused", out, gguf.name)
        return out
    if out.exists() and not force:
        raise CheckpointError(f"output folder {out} exists and was not made from {gguf.name}; pass --force "
                              "(force=True) to replace it")
    arch = gguf_architecture(gguf)
    log.info("converting %s (%s) to a Hugging Face folder in %s", gguf.name, arch, out)
    with staged_folder(out, replace=True) as tmp:
        _convert(gguf, tmp)
        hashes = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        stamp = {"source": gguf.name, "source_sha256": digest, "architecture": arch, "sha256": hashes}
        atomic_write_text(tmp / STAMP, json.dumps(stamp, indent=2) + "\n")
    return out


def resolve_base(base: str | Path) -> Path:
    """A base model folder as given, or for a .gguf file its converted folder in the cache."""
    base = Path(base)
    if base.is_dir() or not is_gguf(base):
        return base
    digest = sha256_file(base)
    return convert_gguf(base, cache_dir() / "gguf" / f"{base.stem}-{digest[:12]}", force=True)


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantised fp32 now. transformers still marks the model as GGUF-quantised and refuses
    # save_pretrained ("quantized with gguf and is not serializable") until the quantiser is dropped too.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
