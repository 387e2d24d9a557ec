"""Helpers of the architecture tests: the CLI in process, and a tiny random base saved with a tokenizer."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "runtime"))  # runtime_helpers: the char tokenizer


def cli(argv: list[str]) -> tuple[int, str]:
    """`hoe ARGV` in process -> (exit code, stdout)."""
    from hoe.cli.cli import main

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
