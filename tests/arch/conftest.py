"""Each architecture of arch_cases.CASES through the user's path once per session:
random base + 3 PEFT adapters -> `hoe assemble` -> `hoe export` (validated), all through the CLI."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_helpers: the char tokenizer

RANKS = (4, 3, 4)  # PEFT ranks of the three experts (padded to 4 inside HoE)


@dataclass
class ArchRun:
    case: object  # arch_cases.ArchCase
    base: object  # the random transformers model (eval, fp32)
    base_dir: Path
    adapters: list[Path]
    ckpt_dir: Path
    out_dir: Path
    export_rc: int
    export_stdout: str


def cli(argv: list[str]) -> tuple[int, str]:
    """`hoe ARGV` in process -> (exit code, stdout)."""
    from hoe.core.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def make_base(case, folder: Path, seed: int = 0):
    """Random tiny base of `case` (norms perturbed too) saved with a char tokenizer (+ ChatML if the case has
    a chat template)."""
    import torch
    from runtime_helpers import write_char_tokenizer
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_config(case.config(), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    base.save_pretrained(folder)
    write_char_tokenizer(folder)
    if not case.chat_template:
        (folder / "chat_template.jinja").unlink()
    return base


@pytest.fixture(scope="session")
def arch_run(tmp_path_factory):
    """arch_run(name) -> ArchRun, made on first use."""
    from arch_cases import BY_NAME
    from tiny_models import peft_adapter

    runs = {}

    def get(name: str) -> ArchRun:
        if name not in runs:
            case = BY_NAME[name]
            root = tmp_path_factory.mktemp(f"arch_{name}")
            base = make_base(case, root / "base")
            adapters = [peft_adapter(base, root / f"adapter{i}", seed=10 + i, rank=r, alpha=2.0 * r + i,
                                     target_modules=list(case.targets)) for i, r in enumerate(RANKS)]
            rc, _ = cli(["assemble", "--base", str(root / "base"), "--peft", *map(str, adapters),
                         "--objectives", "helpful,positive,concise", "--out", str(root / "hoe")])
            assert rc == 0, f"hoe assemble failed for {name}"
            rc, out = cli(["export", "--base", str(root / "base"), "--hoe", str(root / "hoe"),
                           "--out", str(root / "out"), "--threads", "1"])
            runs[name] = ArchRun(case, base, root / "base", adapters, root / "hoe", root / "out", rc, out)
        return runs[name]

    return get
