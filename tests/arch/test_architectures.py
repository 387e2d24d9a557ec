"""docs/SUPPORTED_MODELS.md, row by row: every architecture of arch_cases.CASES goes through
`hoe assemble` -> `hoe export` (its validation passes, TensorRT-ready) -> `hoe generate`, whose greedy
tokens equal PEFT's own (one adapter at a vertex, `add_weighted_adapter(combination_type="cat")` inside)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from arch_cases import CASES, WINDOW
from arch_helpers import cli
from hoe.core.capability import probe_base

NAMES = [c.name for c in CASES]
PROMPT = "The capital of France is"  # 24 characters = tokens: longer than every sliding window (4)
NEW_TOKENS = 10
INTERIOR = [0.2, 0.5, 0.3]


@pytest.mark.parametrize("name", NAMES)
def test_export_validates(arch_run, name):
    run = arch_run(name)
    assert run.export_rc == 0, run.export_stdout
    report = json.loads((run.out_dir / "validation.json").read_text())
    assert report["passed"] and report["max_abs_logits"] < 1e-4, report["max_abs_logits"]
    assert report["argmax_agreement"] == 1.0 and report["n_cases"] == 3
    assert all(o["max_abs"] < 1e-4 for o in report["outputs"].values()), report["outputs"]
    kinds = probe_base(run.base_dir).attention_kinds
    assert ("sliding_attention" in kinds) == run.case.sliding, kinds
    if name in ("gemma3", "gemma2", "qwen2"):  # sliding and global layers mixed (Mistral: every layer sliding)
        assert set(kinds) == {"sliding_attention", "full_attention"}, kinds
    if run.case.sliding:  # validation ran past the window: prompt + decode steps > window
        assert max(report["prompt_lengths"]) + report["steps_per_case"] - 1 > WINDOW + 1
        assert run.base.config.sliding_window == WINDOW


FUSED_NAMES = ["llama", "mistral", "qwen2", "qwen3"]  # export/fused_attention.FUSED_MODEL_TYPES


@pytest.mark.parametrize("name", FUSED_NAMES)
def test_attention_kernel_validates(arch_run, name):
    """`--attention-kernel` through the CLI: hoe's Attention op in place of GroupQueryAttention validates, sliding
    windows (the model's mask) and Qwen3's q/k norms included."""
    from hoe.runtime import kernels

    if kernels.library() is None:
        pytest.skip("hoe was installed without its kernels library")
    run = arch_run(name)
    folder = run.out_dir.with_name("out-attention-kernel")
    rc, out = cli(["export", "--base", str(run.base_dir), "--hoe", str(run.ckpt_dir), "--out", str(folder),
                   "--attention-kernel", "--threads", "1"])
    assert rc == 0, out
    report = json.loads((folder / "validation.json").read_text())
    assert report["passed"] and report["max_abs_logits"] < 1e-4 and report["argmax_agreement"] == 1.0, report
    assert json.loads((folder / "hoe_config.json").read_text())["kv_cache"]["kernel"] == kernels.ATTENTION_KERNEL


@pytest.mark.parametrize("name", NAMES)
def test_tensorrt_ready(arch_run, name):
    from hoe.export.trt_ops import check_model

    run = arch_run(name)
    folder = run.out_dir
    if json.loads((folder / "hoe_config.json").read_text())["kv_cache"].get("shared_buffer"):
        # the default (ort-cpu) graph has fused attention (contrib ops): TensorRT gets the tensorrt target's graph
        folder = run.out_dir.with_name("out-tensorrt")
        if not folder.exists():
            rc, out = cli(["export", "--base", str(run.base_dir), "--hoe", str(run.ckpt_dir), "--out", str(folder),
                           "--target", "tensorrt", "--no-validate", "--threads", "1"])
            assert rc == 0, out
    report = check_model(folder / "model.onnx")
    assert report.ready, report.problems
    assert not {op for op in report.op_counts if op.startswith(("Sequence", "SplitToSequence"))}
    if name == "phi3":  # the fused gate_up chunk became one static Split per layer
        assert report.op_counts.get("Split", 0) >= run.base.config.num_hidden_layers


def _peft_model(run):
    from peft import PeftModel

    model = PeftModel.from_pretrained(copy.deepcopy(run.base), str(run.adapters[0]), adapter_name="e0")
    for i, folder in enumerate(run.adapters[1:], 1):
        model.load_adapter(str(folder), adapter_name=f"e{i}")
    return model.eval()


@torch.no_grad()
def _peft_greedy(model, prompt_ids: list[int], eos: set[int], n: int) -> list[int]:
    ids, out = list(prompt_ids), []
    for _ in range(n):
        token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
        ids.append(token)
        out.append(token)
        if token in eos:
            break
    return out


def _hoe_generate(run, preference, chat=False) -> tuple[int, list[dict]]:
    argv = ["generate", str(run.out_dir), "--prompt", PROMPT, "--preference", ",".join(map(str, preference)),
            "--max-new-tokens", str(NEW_TOKENS), "--json", "--threads", "1"] + (["--chat"] if chat else [])
    rc, out = cli(argv)
    return rc, json.loads(out) if rc == 0 else out


@pytest.mark.parametrize("name", NAMES)
def test_greedy_equals_peft(arch_run, name):
    import hoe.runtime as hr

    run = arch_run(name)
    model = hr.load(run.out_dir, threads=1)
    prompt_ids = model.encode(PROMPT)
    eos = set(model.manifest.eos_token_ids)
    model.close()
    assert len(prompt_ids) > WINDOW
    peft = _peft_model(run)
    base_tokens = _peft_greedy(run.base, prompt_ids, eos, NEW_TOKENS)
    for preference in ([1, 0, 0], INTERIOR):
        if preference == INTERIOR:
            peft.add_weighted_adapter(["e0", "e1", "e2"], INTERIOR, "mix", combination_type="cat")
            peft.set_adapter("mix")
        else:
            peft.set_adapter("e0")
        want = _peft_greedy(peft, prompt_ids, eos, NEW_TOKENS)
        rc, rows = _hoe_generate(run, preference)
        assert rc == 0, rows
        assert np.allclose(rows[0]["router_mix"][:3], preference, atol=1e-6), rows[0]["router_mix"]
        assert rows[0]["token_ids"] == want, (preference, rows[0]["token_ids"], want)
    assert want != base_tokens or len(want) < 3  # the experts change what the model writes


def test_chat_template_missing_is_named(arch_run, capsys):
    """gemma3's case has no chat template: `--chat` is refused with a clear message, plain prompts work."""
    from hoe.cli.cli import main

    run = arch_run("gemma3")
    assert not (run.out_dir / "chat_template.jinja").exists()
    capsys.readouterr()
    rc = main(["generate", str(run.out_dir), "--prompt", PROMPT, "--preference", "1,0,0", "--chat",
               "--max-new-tokens", "2"])
    assert rc == 2 and "has no chat template" in capsys.readouterr().err
    rc, rows = _hoe_generate(run, [1, 0, 0])
    assert rc == 0 and rows[0]["token_ids"]


@torch.no_grad()
@pytest.mark.parametrize("name", [c.name for c in CASES if c.sliding])
def test_the_window_is_in_force(arch_run, name):
    """The sliding cases' reference really attends within WINDOW tokens on the test prompt: the same weights
    with a window wider than the prompt give other logits. So greedy = PEFT and validation above cover the
    graph's sliding masks (the graph keeps every column for sliding layers and masks them, docs/SUPPORTED_MODELS.md)."""
    from transformers import AutoModelForCausalLM

    run = arch_run(name)
    ids = torch.randint(3, 97, (1, 3 * WINDOW), generator=torch.Generator().manual_seed(0))
    wide = AutoModelForCausalLM.from_pretrained(run.base_dir, sliding_window=10_000).eval()
    windowed, unwindowed = run.base(input_ids=ids).logits, wide(input_ids=ids).logits
    assert torch.allclose(windowed[:, :WINDOW], unwindowed[:, :WINDOW], atol=1e-5)  # inside the window: same
    assert (windowed[:, -1] - unwindowed[:, -1]).abs().max() > 1e-3
