"""Each architecture of arch_cases.CASES through the user's path once per session:
random base + 3 PEFT adapters -> `hoe assemble` -> `hoe export` (validated), all through the CLI."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

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


@pytest.fixture(scope="session")
def arch_run(tmp_path_factory):
    """arch_run(name) -> ArchRun, made on first use."""
    from arch_cases import BY_NAME
    from arch_helpers import cli, make_base
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
