"""Validation against a float64 reference, and padded past K/V columns that must not reach real rows."""

import json
import shutil

import numpy as np
import pytest
import torch
from hoe.contract import manifest as mf
from hoe.export.fp64_reference import Float64RMSNorm, Float64Rotary, exact_float64
from hoe.export.validate import ValidationConfig, validate_export

ARCHS = ("llama", "qwen2", "mistral")


def _rms64(x, weight, eps):
    return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("arch", ARCHS)
def test_exact_float64_removes_every_float32_step(arch):
    """Hugging Face's RMSNorm and rotary embedding compute in float32 even in a .double() model: the swapped
    modules agree with a float64 formula to 1e-13 where the originals are off by more than 1e-9."""
    from tiny_models import tiny_model

    plain = tiny_model(arch).double()
    exact = tiny_model(arch)
    swapped = exact_float64(exact)
    assert swapped == {"rms_norm": 2 * 2 + 1, "rotary": 1}, swapped  # 2 layers × 2 norms + final norm
    x = torch.randn(2, 5, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 30
    pairs = [(n, m, plain.get_submodule(n)) for n, m in exact.named_modules() if isinstance(m, Float64RMSNorm)]
    for name, new, old in pairs:
        want = _rms64(x, new.weight, new.variance_epsilon)
        assert (new(x) - want).abs().max() < 1e-13, name
        assert (old(x) - want).abs().max() > 1e-9, name  # the original rounds through float32
    pos = torch.tensor([[0, 3, 17, 250]])
    rotary = next(m for m in exact.modules() if isinstance(m, Float64Rotary))
    freqs = pos[..., None].double() * rotary.inv_freq.double()
    cos, sin = rotary(x, pos)
    assert cos.dtype == torch.float64 and (cos - torch.cat([freqs, freqs], -1).cos()).abs().max() < 1e-15
    old_cos, _ = plain.model.rotary_emb(x, pos)
    assert (old_cos - cos).abs().max() > 1e-9


@pytest.mark.parametrize("arch", ARCHS)
def test_validation_reports_distance_to_float64(tiny_export, arch):
    """fp32 exports: ORT and torch fp32 both measured against float64; both are fp32 rounding (tiny model:
    < 1e-5) and torch fp32 differs from float64 at all (the float64 side really ran in float64)."""
    _, _, out, _ = tiny_export(arch)
    v = json.loads((out / mf.VALIDATION_FILE).read_text())
    f = v["fp64"]
    assert f["cases"] == 1 and f["logit_scale"] > 0
    assert 0 < f["ort_vs_fp64"] < 1e-5 and 0 < f["torch_fp32_vs_fp64"] < 1e-5, f
    assert v["config"]["fp64_cases"] == 1


def test_float64_reference_can_be_turned_off(tiny_export, tmp_path):
    base_dir, ckpt_dir, out, _ = tiny_export("llama")
    folder = tmp_path / "copy"
    shutil.copytree(out, folder)
    report = validate_export(folder, base_dir, ckpt_dir, ValidationConfig(threads=1, decode_steps=1, fp64_cases=0))
    assert report["passed"] and "fp64" not in report


def test_padded_past_columns_do_not_reach_real_rows(tiny_export):
    """Left-padded past (a row whose past is all padding, one partly padded): garbage written into the padded
    K/V columns leaves every real position's logits bit-identical."""
    import onnxruntime as ort
    from hoe.core.routing import route
    from safetensors.numpy import load_file

    _, _, out, _ = tiny_export("llama")
    manifest = mf.load_manifest(out)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(out / mf.MODEL_FILE), opts, providers=["CPUExecutionProvider"])
    static = {**load_file(str(out / mf.EXPERTS_FILE)), **load_file(str(out / mf.ROUTERS_FILE))}
    names = [o.name for o in session.get_outputs()]
    layers = manifest["architecture"]["num_layers"]
    past_names = [manifest["kv_cache"][k] % i for i in range(layers) for k in ("past_key", "past_value")]
    hoe = manifest["hoe"]
    mix = np.stack([route(p, hoe["anchors"], hoe["n_route"]) for p in np.eye(3)]).astype(np.float32)
    rng = np.random.default_rng(0)
    p, t = 5, 4
    ids = rng.integers(0, manifest["architecture"]["vocab_size"], size=(3, p + t))
    mask = np.ones((3, p + t), dtype=np.int64)
    mask[1, :3], mask[2, :6] = 0, 0  # row 2: the whole past and one new token are padding
    pos = np.clip(mask.cumsum(1) - 1, 0, None)
    kv = manifest["inputs"][past_names[0]]["shape"]

    def run(i, m, q, past):
        feed = {"input_ids": i, "attention_mask": m, "position_ids": q, "router_mix": mix,
                **dict(zip(past_names, past)), **static}
        return dict(zip(names, session.run(None, feed)))

    empty = [np.zeros((3, kv[1], 0, kv[3]), np.float32)] * len(past_names)
    first = run(ids[:, :p], mask[:, :p], pos[:, :p], empty)
    past = [first[n] for n in names[1:]]
    logits = run(ids[:, p:], mask, pos[:, p:], past)["logits"]
    padded = mask[:, :p] == 0  # [B,P]
    for scale in (1e3, 1e30):
        dirty = [x.copy() for x in past]
        for x in dirty:
            view = x.transpose(0, 2, 1, 3)  # [B,P,Hkv,D]
            view[padded] = scale * rng.standard_normal(view[padded].shape)
        again = run(ids[:, p:], mask, pos[:, p:], dirty)["logits"]
        real = mask[:, p:] > 0
        assert np.array_equal(again[real], logits[real]), scale
        assert np.isfinite(logits[real]).all()
