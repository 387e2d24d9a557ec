"""One tiny world for the bad-input and reliability tests, built once per session (about 15 s):

    base/        tiny random Llama (97-char tokenizer, ChatML template), safetensors
    other_base/  the same shapes, other weights (another base model for identity checks)
    ad0..ad2/    PEFT LoRA adapters (non-zero A and B) on base
    hoe/         HoE checkpoint of base (PEFT experts, random routers)
    other_hoe/   HoE checkpoint assembled on other_base (same shapes)
    nan_hoe/     hoe/ with one NaN in an expert
    bin_base/    config.json + pytorch_model.bin only (pickle: never loaded)
    out/         `hoe export` of base + hoe (not validated: the runtime tests compare with PyTorch)

Tests that change a folder work on a copy (`world.copy("out")`).
"""

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))


@dataclass
class World:
    root: Path
    scratch: Path

    def __getattr__(self, name: str) -> Path:
        return self.root / name

    def path(self, name: str) -> str:
        return str(self.root / name)

    def copy(self, name: str) -> Path:
        """A private copy of one folder (for tests that change or break it)."""
        n = len(list(self.scratch.iterdir()))
        dst = self.scratch / f"{n}" / name
        shutil.copytree(self.root / name, dst)
        return dst


def _nan_copy(src: Path, dst: Path) -> None:
    from hoe.core.checkpoint import HoECheckpoint

    ckpt = HoECheckpoint.load(src)
    first = sorted(k for k in ckpt.experts if k.endswith("lora_A"))[0]
    ckpt.experts[first][0, 0, 0] = float("nan")
    dst.mkdir()
    ckpt.config.save(dst / "hoe.json")
    from safetensors.torch import save_file

    save_file(ckpt.experts, str(dst / "experts.safetensors"))
    save_file(ckpt.routers, str(dst / "routers.safetensors"))


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> World:
    import torch
    from hoe.core.assemble import build_checkpoint
    from hoe.core.experts import experts_from_peft
    from hoe.export.onnx_export import ExportConfig, export
    from runtime_helpers import write_char_tokenizer
    from tiny_models import OBJECTIVES, peft_adapter, random_routers, tiny_model

    root = tmp_path_factory.mktemp("world")
    base, other = tiny_model("llama", seed=0), tiny_model("llama", seed=1)
    for model, name in ((base, "base"), (other, "other_base")):
        model.save_pretrained(root / name)
        write_char_tokenizer(root / name)
    adapters = [peft_adapter(base, root / f"ad{i}", seed=10 + i, rank=4 - (i % 2)) for i in range(3)]
    experts, modules = experts_from_peft(adapters)
    anchors = torch.eye(3).tolist() + [[1 / 3] * 3]
    for model, name in ((base, "hoe"), (other, "other_hoe")):
        ckpt = random_routers(build_checkpoint(model, experts, modules, OBJECTIVES, anchors=anchors), seed=0)
        ckpt.save(root / name)
    _nan_copy(root / "hoe", root / "nan_hoe")
    (root / "bin_base").mkdir()
    shutil.copy(root / "base" / "config.json", root / "bin_base" / "config.json")
    torch.save(base.state_dict(), root / "bin_base" / "pytorch_model.bin")
    export(root / "base", root / "hoe", root / "out", ExportConfig(validate=False, threads=1))
    return World(root, tmp_path_factory.mktemp("scratch"))
