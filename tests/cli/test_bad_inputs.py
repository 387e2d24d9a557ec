"""Bad input, as a hostile user gives it, against the CLI and the Python API (tiny exports, see conftest.py).

Every CLI case must exit 2 with exactly one stderr line `hoe CMD: error: ...` matching the case's pattern
(which names what was expected and what came), and no traceback; every API case must raise one of our
exceptions (hoe.core.errors) whose one-line message matches.
"""

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from hoe.cli.cli import main
from hoe.core.errors import HoEError

GEN = ["--threads", "1", "--max-new-tokens", "2"]
P = ["--preference", "1,0,0"]


@dataclass
class Case:
    id: str
    argv: list[str]  # "{name}" is replaced by a world path (or one a setup made)
    expect: str  # regex the one error line must match (expected and actual named)
    setup: object = None  # setup(world) -> {placeholder: path}
    cwd: bool = field(default=False)  # run from inside the world's scratch folder


# ------------------------------------------------------------------------------------- broken copies


def _manifest_edit(edit):
    def setup(world):
        folder = world.copy("out")
        path = folder / "hoe_config.json"
        data = json.loads(path.read_text())
        edit(data, folder)
        path.write_text(json.dumps(data))
        return {"bad": str(folder)}
    return setup


def _file_edit(name, edit):
    def setup(world):
        folder = world.copy("out")
        edit(folder / name)
        return {"bad": str(folder)}
    return setup


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage\xff" * 50)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(100)


def _nan_experts(path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].copy()
    tensors[first].flat[0] = np.nan
    save_file(tensors, str(path))


def _adapter_edit(edit):
    def setup(world):
        folder = world.copy("ad0")
        edit(folder)
        return {"bad": str(folder)}
    return setup


def _nan_adapter(folder: Path) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = sorted(k for k in tensors if "lora_B" in k)[0]
    tensors[key] = tensors[key].copy()
    tensors[key].flat[0] = np.inf
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _garbage_file(world):
    path = world.scratch / "garbage.onnx"
    _garbage(path)
    return {"bad": str(path)}


def _empty_file(world):
    path = world.scratch / "empty.onnx"
    path.write_bytes(b"")
    return {"bad": str(path)}


def _drop(key):
    return _manifest_edit(lambda d, f: d.pop(key))


ASM = ["assemble", "--base", "{base}", "--peft", "{ad0}", "{ad1}", "{ad2}"]
OBJ = ["--objectives", "a,b,c"]
EXP = ["export", "--base", "{base}", "--hoe", "{hoe}"]
_LEN = r"length 3 \(one weight per objective\), got shape \(2,\)"

CLI_CASES = [
    # -- generate: folder
    Case("gen_missing_folder", ["generate", "{root}/nope", "--prompt", "hi", *P], r"exported folder not found: .*nope"),
    Case("gen_file_not_folder", ["generate", "{out}/model.onnx", "--prompt", "hi", *P],
         r"expected an exported folder .* got the file .*model.onnx; pass its folder"),
    Case("gen_not_an_export", ["generate", "{base}", "--prompt", "hi", *P], r"not an exported HoE folder"),
    # -- generate: preference
    Case("gen_pref_short", ["generate", "{out}", "--prompt", "hi", "--preference", "1,0"], _LEN),
    Case("gen_pref_long", ["generate", "{out}", "--prompt", "hi", "--preference", "1,0,0,0"],
         r"length 3 .* got shape \(4,\)"),
    Case("gen_pref_negative", ["generate", "{out}", "--prompt", "hi", "--preference=-1,1,1"],
         r"must be >= 0, got \[-1.0, 1.0, 1.0\]"),
    Case("gen_pref_zero", ["generate", "{out}", "--prompt", "hi", "--preference", "0,0,0"],
         r"positive sum, got \[0.0, 0.0, 0.0\]"),
    Case("gen_pref_nan", ["generate", "{out}", "--prompt", "hi", "--preference", "nan,1,1"],
         r"must be finite, got \[nan, 1.0, 1.0\]"),
    Case("gen_pref_inf", ["generate", "{out}", "--prompt", "hi", "--preference", "inf,1,1"], r"finite, got \[inf"),
    Case("gen_pref_text", ["generate", "{out}", "--prompt", "hi", "--preference", "a,b,c"],
         r"numbers separated by commas like 0.2,0.5,0.3, got 'a,b,c'"),
    Case("gen_pref_empty_weight", ["generate", "{out}", "--prompt", "hi", "--preference", "1,,0"],
         r"numbers separated by commas .* got '1,,0'"),
    Case("gen_pref_count", ["generate", "{out}", "--prompt", "a", "--prompt", "b", *P, *P, *P],
         r"one --preference for all prompts or one per prompt \(2\), got 3"),
    Case("gen_pref_missing", ["generate", "{out}", "--prompt", "hi", *GEN],
         r"a preference is required: 3 weights for \['helpful', 'positive', 'concise'\]"),
    # -- generate: sampling options
    Case("gen_seed_negative", ["generate", "{out}", "--prompt", "hi", *P, "--seed=-5"],
         r"seed must be an integer >= 0 or None, got -5"),
    Case("gen_temperature_negative", ["generate", "{out}", "--prompt", "hi", *P, "--temperature=-1"],
         r"temperature must be a number >= 0, got -1"),
    Case("gen_temperature_inf", ["generate", "{out}", "--prompt", "hi", *P, "--temperature", "inf"],
         r"temperature must be a number >= 0, got inf"),
    Case("gen_top_p_zero", ["generate", "{out}", "--prompt", "hi", *P, "--top-p", "0"],
         r"top_p must be a number in \(0, 1\], got 0"),
    Case("gen_top_p_big", ["generate", "{out}", "--prompt", "hi", *P, "--top-p", "1.5"],
         r"top_p must be a number in \(0, 1\], got 1.5"),
    Case("gen_top_k_negative", ["generate", "{out}", "--prompt", "hi", *P, "--top-k=-1"],
         r"top_k must be an integer >= 0, got -1"),
    Case("gen_max_new_zero", ["generate", "{out}", "--prompt", "hi", *P, "--max-new-tokens", "0"],
         r"max_new_tokens must be an integer >= 1, got 0"),
    Case("gen_rep_penalty_zero", ["generate", "{out}", "--prompt", "hi", *P, "--repetition-penalty", "0"],
         r"repetition_penalty must be a number > 0, got 0"),
    Case("gen_stop_empty", ["generate", "{out}", "--prompt", "hi", *P, "--stop", ""],
         r"stop must be non-empty strings, got \[''\]"),
    Case("gen_prompt_too_long", ["generate", "{out}", "--prompt", "x" * 300, *P, *GEN],
         r"prompt 0 has 300 tokens; the model's context is 256 tokens"),
    # -- generate: backend options
    Case("gen_threads_negative", ["generate", "{out}", "--prompt", "hi", *P, "--threads=-4"],
         r"threads must be an integer >= 1 or None .*, got -4"),
    Case("gen_threads_zero", ["generate", "{out}", "--prompt", "hi", *P, "--threads", "0"],
         r"threads must be an integer >= 1 .* got 0"),
    Case("gen_backend_unknown", ["generate", "{out}", "--prompt", "hi", *P, "--backend", "nope"],
         r"unknown backend 'nope'; expected one of \["),
    Case("gen_provider_unknown", ["generate", "{out}", "--prompt", "hi", *P, "--providers", "nope"],
         r"unknown execution provider 'nope'; expected one of"),
    Case("gen_torch_no_base", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--backend", "torch"],
         r"needs the Hugging Face base model folder", _drop("source")),
    # -- generate: damaged folders
    Case("gen_onnx_garbage", ["generate", "{bad}", "--prompt", "hi", *P, *GEN],
         r"model.onnx: sha256 mismatch, expected [0-9a-f]{64} .* got [0-9a-f]{64}", _file_edit("model.onnx", _garbage)),
    Case("gen_onnx_garbage_noverify", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--no-verify"],
         r"onnxruntime cannot load it .*expected the exported graph", _file_edit("model.onnx", _garbage)),
    Case("gen_data_truncated_noverify", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--no-verify"],
         r"onnxruntime cannot load it", _file_edit("model.onnx.data", _truncate)),
    Case("gen_data_missing", ["generate", "{bad}", "--prompt", "hi", *P],
         r"file model.onnx.data named in hoe_config.json is missing", _file_edit("model.onnx.data", Path.unlink)),
    Case("gen_tokenizer_garbage_noverify", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--no-verify"],
         r"tokenizer.json is not a tokenizers JSON file .* expected tokenizer.json",
         _file_edit("tokenizer.json", _garbage)),
    Case("gen_tokenizer_is_other_file", ["generate", "{bad}", "--prompt", "hi", *P, *GEN],
         r"hoe.json is not a tokenizers JSON file",
         _manifest_edit(lambda d, f: d["files"].update(tokenizer="hoe.json"))),
    Case("gen_experts_nan_noverify", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--no-verify"],
         r"must be finite, got 1 NaN/inf of \d+ values", _file_edit("experts.safetensors", _nan_experts)),
    Case("gen_experts_garbage_noverify", ["generate", "{bad}", "--prompt", "hi", *P, *GEN, "--no-verify"],
         r"experts.safetensors is not a readable float safetensors file", _file_edit("experts.safetensors", _garbage)),
    # -- generate: manifest
    Case("gen_manifest_not_json", ["generate", "{bad}", "--prompt", "hi", *P],
         r"hoe_config.json is not valid JSON", _file_edit("hoe_config.json", _garbage)),
    Case("gen_manifest_version", ["generate", "{bad}", "--prompt", "hi", *P],
         r"format_version 99 is not one this hoe reads \(expected one of \[2\]\)",
         _manifest_edit(lambda d, f: d.update(format_version=99))),
    Case("gen_manifest_no_inputs", ["generate", "{bad}", "--prompt", "hi", *P],
         r"lacks sections \['inputs'\]; expected all of", _drop("inputs")),
    Case("gen_manifest_no_sha256", ["generate", "{bad}", "--prompt", "hi", *P],
         r"has no sha256 section \(got None\); expected the sha256 of every file", _drop("sha256")),
    Case("gen_manifest_abs_model", ["generate", "{bad}", "--prompt", "hi", *P],
         r"names the file '/.*model.onnx'; expected a file name inside",
         _manifest_edit(lambda d, f: d["model"].update(file=str(f / "model.onnx")))),
    Case("gen_manifest_dotdot", ["generate", "{bad}", "--prompt", "hi", *P],
         r"names the file '../out/experts.safetensors'; expected a file name inside",
         _manifest_edit(lambda d, f: d["files"].update(experts="../out/experts.safetensors"))),
    # -- chat
    Case("chat_missing_folder", ["chat", "{root}/nope"], r"exported folder not found"),
    Case("chat_pref_short", ["chat", "{out}", "--preference", "1,0"], _LEN),
    Case("chat_seed_negative", ["chat", "{out}", "--seed=-5"], r"seed must be an integer >= 0 or None, got -5"),
    Case("chat_threads_negative", ["chat", "{out}", "--threads=-4"], r"threads must be an integer >= 1 .* got -4"),
    # -- assemble
    Case("asm_out_is_base", [*ASM, *OBJ, "--out", "{base}", "--force"], r"output folder .*base is the input .*base"),
    Case("asm_out_is_adapter", [*ASM, *OBJ, "--out", "{ad1}", "--force"], r"output folder .*ad1 is the input"),
    Case("asm_out_inside_base", [*ASM, *OBJ, "--out", "{base}/hoe", "--force"], r"lies inside the input .*base"),
    Case("asm_out_exists", [*ASM, *OBJ, "--out", "{hoe}"], r"output folder .*hoe exists; pass --force"),
    Case("asm_objectives_empty", [*ASM, "--objectives", "a,,b", "--out", "{root}/n"],
         r"objectives must be non-empty names, .*got \['a', '', 'b'\]"),
    Case("asm_objectives_dupe", [*ASM, "--objectives", "a,a,b", "--out", "{root}/n"],
         r"objective names must be distinct, got \['a'\] more than once"),
    Case("asm_objectives_count", [*ASM, "--objectives", "a,b", "--out", "{root}/n"],
         r"one expert folder per objective expected \(2 objectives .*\), got 3 folders"),
    Case("asm_rank_with_peft", [*ASM, *OBJ, "--rank", "4", "--out", "{root}/n"],
         r"--rank applies to --finetuned .* got --rank 4"),
    Case("asm_rank_zero", ["assemble", "--base", "{base}", "--finetuned", "{other_base}", "--rank", "0",
                           "--objectives", "a", "--out", "{root}/n"], r"--rank must be a positive integer .* got 0"),
    Case("asm_rank_missing", ["assemble", "--base", "{base}", "--finetuned", "{other_base}", "--objectives", "a",
                              "--out", "{root}/n"], r"--rank must be a positive integer .* got None"),
    Case("asm_base_pickle", ["assemble", "--base", "{bin_base}", "--peft", "{ad0}", "{ad1}", "{ad2}", *OBJ, "--out",
                             "{root}/n"], r"expected model weights as \*.safetensors, found \['pytorch_model.bin'\]"),
    Case("asm_finetuned_pickle", ["assemble", "--base", "{base}", "--finetuned", "{bin_base}", "--rank", "2",
                                  "--objectives", "a", "--out", "{root}/n"], r"found \['pytorch_model.bin'\]"),
    Case("asm_base_missing", ["assemble", "--base", "{root}/nope", "--peft", "{ad0}", "{ad1}", "{ad2}", *OBJ,
                              "--out", "{root}/n"], r"base model folder not found: .*nope"),
    Case("asm_peft_not_adapter", ["assemble", "--base", "{base}", "--peft", "{base}", "{ad1}", "{ad2}", *OBJ,
                                  "--out", "{root}/n"], r"PEFT adapter folder .*base lacks adapter_config.json"),
    Case("asm_peft_bad_json", ["assemble", "--base", "{base}", "--peft", "{bad}", "{ad1}", "{ad2}", *OBJ,
                               "--out", "{root}/n"], r"adapter_config.json is not valid JSON",
         _adapter_edit(lambda f: _garbage(f / "adapter_config.json"))),
    Case("asm_peft_nan", ["assemble", "--base", "{base}", "--peft", "{bad}", "{ad1}", "{ad2}", *OBJ,
                          "--out", "{root}/n"], r"expected finite values, got 1 NaN/inf", _adapter_edit(_nan_adapter)),
    # -- export
    Case("exp_out_is_base", [*EXP, "--out", "{base}", "--force"], r"output folder .*base is the input"),
    Case("exp_out_is_ckpt", [*EXP, "--out", "{hoe}", "--force"], r"output folder .*hoe is the input"),
    Case("exp_out_contains_inputs", [*EXP, "--out", "{root}", "--force"], r"output folder .* contains the input"),
    Case("exp_out_dot", [*EXP, "--out", ".", "--force"], r"holds the working folder", cwd=True),
    Case("exp_out_exists", [*EXP, "--out", "{out}"], r"output folder .*out exists; pass --force"),
    Case("exp_out_is_file", [*EXP, "--out", "{base}/config.json", "--force"], r"exists and is not a folder"),
    Case("exp_opset_99", [*EXP, "--out", "{root}/n", "--opset", "99"],
         r"opset must be an integer in \[18, 23\] .* got 99"),
    Case("exp_opset_17", [*EXP, "--out", "{root}/n", "--opset", "17"],
         r"opset must be an integer in \[18, 23\].* got 17"),
    Case("exp_threads_zero", [*EXP, "--out", "{root}/n", "--threads", "0"], r"threads must be an integer >= 1, got 0"),
    Case("exp_base_pickle", ["export", "--base", "{bin_base}", "--hoe", "{hoe}", "--out", "{root}/n"],
         r"found \['pytorch_model.bin'\]"),
    Case("exp_ckpt_not_hoe", ["export", "--base", "{base}", "--hoe", "{base}", "--out", "{root}/n"],
         r"HoEConfig: file not found: .*hoe.json"),
    Case("exp_ckpt_nan", ["export", "--base", "{base}", "--hoe", "{nan_hoe}", "--out", "{root}/n"],
         r"expected finite values, got 1 NaN/inf"),
    Case("exp_other_base", ["export", "--base", "{other_base}", "--hoe", "{hoe}", "--out", "{root}/n"],
         r"made for another base model: weights_sha256 is [0-9a-f]{16} in hoe.json, [0-9a-f]{16}"),
    # -- swap-experts
    Case("swap_other_base", ["swap-experts", "{bad}", "{other_hoe}"],
         r"made for another base model: weights_sha256 is [0-9a-f]{16} in .*hoe.json, [0-9a-f]{16} in",
         lambda w: {"bad": str(w.copy("out"))}),
    Case("swap_nan", ["swap-experts", "{bad}", "{nan_hoe}"], r"experts.safetensors: .* must be finite, got 1 NaN/inf",
         lambda w: {"bad": str(w.copy("out"))}),
    Case("swap_missing_ckpt", ["swap-experts", "{out}", "{root}/nope"], r"HoEConfig: file not found: .*nope"),
    Case("swap_damaged_export", ["swap-experts", "{bad}", "{hoe}"], r"sha256 mismatch",
         _file_edit("model.onnx", _garbage)),
    Case("swap_threads_zero", ["swap-experts", "{out}", "{hoe}", "--threads", "0"], r"--threads must be >= 1, got 0"),
    # -- trt-check
    Case("trt_missing", ["trt-check", "{root}/nope.onnx"], r"ONNX file not found: .*nope.onnx; expected model.onnx"),
    Case("trt_garbage", ["trt-check", "{bad}"], r"garbage.onnx is not a readable ONNX model .*expected a file saved",
         _garbage_file),
    Case("trt_folder_without_model", ["trt-check", "{base}"], r"ONNX file not found: .*base/model.onnx"),
    Case("trt_json_file", ["trt-check", "{out}/hoe.json"], r"hoe.json is not a readable ONNX model"),
    Case("trt_empty_file", ["trt-check", "{bad}"], r"empty.onnx is not a readable ONNX model \(no ir_version",
         _empty_file),
]


def _argv(case: Case, world) -> list[str]:
    places = {"root": str(world.root), **{p.name: str(p) for p in world.root.iterdir()}}
    if case.setup is not None:
        places.update(case.setup(world))
    return [re.sub(r"\{(\w+)\}", lambda m: places[m[1]], a) for a in case.argv]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_bad_input(case, world, capsys, monkeypatch):
    argv = _argv(case, world)
    if case.cwd:
        monkeypatch.chdir(world.scratch)
    before = sorted(p.name for p in world.root.iterdir())
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error:" in line or "Error" in line]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"hoe {argv[0]}: error: "), err  # (a progress bar may precede)
    assert re.search(case.expect, lines[0]), lines[0]
    assert sorted(p.name for p in world.root.iterdir()) == before  # nothing created, nothing deleted


# ------------------------------------------------------------------------------------------------- API


def _model(world):
    import hoe.runtime as hr

    return hr.load(world.out, threads=1)


def _set_pref_row(world):
    gen = _model(world).generator([1, 0, 0])
    gen.append_tokens([[5, 6]])
    gen.set_preference([0, 1, 0], rows=[5])


def _api_cases():
    import hoe.runtime as hr
    from hoe.contract.manifest import swap_experts
    from hoe.core.assemble import assemble
    from hoe.core.config import HoEConfig
    from hoe.core.experts import read_peft_adapter
    from hoe.core.loading import load_base
    from hoe.core.routing import validate_preference
    from hoe.export.onnx_export import ExportConfig
    from hoe.runtime import GenerationConfig

    def gen(pref=(1, 0, 0), prompts="hi", **kw):
        return lambda w: _model(w).generate(prompts, list(pref) if isinstance(pref, tuple) else pref,
                                            GenerationConfig(**{"max_new_tokens": 2, **kw}))

    hoe_kw = dict(expert_prefs=[[1.0]], anchors=[[1.0]], target_modules=["m"], rank=1)
    return [
        ("api_threads_text", lambda w: hr.load(w.out, threads="two"),
         r"threads must be an integer >= 1 or None .*, got 'two'"),
        ("api_threads_negative", lambda w: hr.load(w.out, threads=-4), r"threads must be an integer >= 1 .* got -4"),
        ("api_backend_unknown", lambda w: hr.load(w.out, backend="nope"), r"unknown backend 'nope'; expected one of"),
        ("api_pref_ragged", gen([[1, 0, 0], [0, 1]], ["a", "b"]),
         r"preference must be numbers .* or a list of such rows, got \[\[1, 0, 0\], \[0, 1\]\]"),
        ("api_pref_short", gen((1, 0)), _LEN),
        ("api_pref_text", gen("1,0,0"), r"preference must be numbers .* got '1,0,0'"),
        ("api_pref_3d", gen([[[1, 0, 0]]]), r"preference must be \[m\] or \[B, m\], got shape \(1, 1, 3\)"),
        ("api_pref_rows", gen([[1, 0, 0]] * 3, ["a", "b"]), r"got 3 preferences for 2 prompts"),
        ("api_seed_negative", gen(seed=-5), r"seed must be an integer >= 0 or None, got -5"),
        ("api_seed_text", gen(seed="1"), r"seed must be an integer >= 0 or None, got '1'"),
        ("api_max_new_text", gen(max_new_tokens="2"), r"max_new_tokens must be an integer >= 1, got '2'"),
        ("api_no_prompts", gen(prompts=[]), r"prompts must be a string, token ids or a non-empty list .* got \[\]"),
        ("api_token_out_of_range", gen(prompts=[[1, 500]]), r"token ids in \[1, 500\]; expected ids in \[0, 97\)"),
        ("api_empty_token_list", gen(prompts=[[5], []]), r"prompt must be a string, got list"),
        ("api_prompt_number", gen(prompts=[5.5]), r"prompt must be a string, got float"),
        ("api_chat_bad_message", lambda w: _model(w).chat([{"role": "user"}], [1, 0, 0]),
         r"chat message 0 must be a dict with string 'role' and 'content', got \{'role': 'user'\}"),
        ("api_chat_not_dicts", lambda w: _model(w).chat([["user", "hi"]], [1, 0, 0]),
         r"chat message 0 must be a dict with string 'role' and 'content', got \['user', 'hi'\]"),
        ("api_validate_pref_inf", lambda w: validate_preference([1e308, float("inf"), 0], 3), r"finite, got \[1e\+308"),
        ("api_hoeconfig_dupes", lambda w: HoEConfig(objectives=["a", "a"], **{**hoe_kw, "expert_prefs": [[1.0, 0.0]],
                                                                              "anchors": [[1.0, 0.0]]}),
         r"objective names must be distinct, got \['a'\]"),
        ("api_hoeconfig_rank", lambda w: HoEConfig(objectives=["a"], **{**hoe_kw, "rank": 0}),
         r"rank must be a positive integer, got 0"),
        ("api_export_opset", lambda w: ExportConfig(opset=99), r"opset must be an integer in \[18, 23\].* got 99"),
        ("api_export_dtype", lambda w: ExportConfig(dtype="int3"),
         r"dtype must be one of \['fp16', 'fp32'\], got 'int3'"),
        ("api_assemble_out_is_base", lambda w: assemble(w.base, ["a", "b", "c"], w.base, peft=[w.ad0, w.ad1, w.ad2],
                                                        force=True), r"is the input"),
        ("api_load_base_pickle", lambda w: load_base(w.bin_base), r"found \['pytorch_model.bin'\]"),
        ("api_load_base_dtype", lambda w: load_base(w.base, "fp8"), r"dtype must be one of .* got 'fp8'"),
        ("api_read_peft_not_adapter", lambda w: read_peft_adapter(w.base), r"lacks adapter_config.json"),
        ("api_swap_other_base", lambda w: swap_experts(w.copy("out"), w.other_hoe), r"made for another base model"),
        ("api_generator_set_pref_row", _set_pref_row, r"rows must be in \[0, 1\), got \[5\]"),
        ("api_generator_no_prompt", lambda w: _model(w).generator([1, 0, 0]).generate_next_token(),
         r"no prompt: call append_tokens first"),
    ]


API_CASES = _api_cases()


@pytest.mark.parametrize("case", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input(case, world):
    _, call, expect = case
    with pytest.raises(HoEError) as info:
        call(world)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(expect, message), message


def test_at_least_sixty_kinds():
    assert len(CLI_CASES) + len(API_CASES) >= 60
    assert len({c.id for c in CLI_CASES} | {c[0] for c in API_CASES}) == len(CLI_CASES) + len(API_CASES)


def test_inputs_survive_every_refused_force(world):
    """After the whole table: base, adapters and checkpoints are all still whole (issue 14, data lost 1)."""
    for name in ("base", "ad0", "ad1", "ad2", "hoe", "out"):
        assert any((world.root / name).iterdir()), name
    assert (world.base / "config.json").is_file() and (world.out / "model.onnx").is_file()
    shutil.rmtree(world.scratch / "unused", ignore_errors=True)
