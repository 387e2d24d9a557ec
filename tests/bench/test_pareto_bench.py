"""`hoe bench pareto` on a tiny chat model: the mixed-stream decoder against naive references, and the report."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from hoe.bench.hypervolume import hypervolume  # noqa: E402
from hoe.bench.pareto import ParetoConfig, run, summary_lines  # noqa: E402
from hoe.bench.pareto_decode import decode, prefill, select  # noqa: E402
from hoe.bench.pareto_eval import static_tensors  # noqa: E402
from hoe.bench.pareto_stats import check_consistency  # noqa: E402
from hoe.core.checkpoint import HoECheckpoint  # noqa: E402
from hoe.core.generate import generate  # noqa: E402
from hoe.core.loading import hoe_from_checkpoint, load_base  # noqa: E402
from hoe.core.routing import simplex_grid  # noqa: E402
from hoe.train.data import ChatCodec  # noqa: E402
from hoe.train.lm import left_pad  # noqa: E402
from tiny_chat import tiny_chat_hoe, write_prompts  # noqa: E402

OBJECTIVES = ["char:a", "char:e", "concise"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pareto")
    base_dir, _ = tiny_chat_hoe(tmp, OBJECTIVES)
    return tmp, base_dir


def test_simplex_grid():
    grid = simplex_grid(3, 4)
    assert len(grid) == 15 and all(abs(sum(p) - 1) < 1e-12 for p in grid)
    assert len(simplex_grid(2, 4)) == 5


def test_single_stream_decode_equals_reference_generate(tiny):
    tmp, base_dir = tiny
    codec = ChatCodec.from_folder(base_dir)
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(tmp / "ckpt"))
    prompts = [codec.prompt_ids(p) for p in ["say hello", "what is rain today", "name a colour"]]
    mix = torch.tensor([[0, 0, 0, 1.0], [0.5, 0.5, 0, 0], [0, 0.2, 0, 0.8]])
    pre = prefill(model, prompts, codec.pad_id, router_mix=mix)
    got = decode(model, pre, torch.arange(3), torch.ones(3), 3, 10, codec.eos_id)
    ids, mask = left_pad(prompts, codec.pad_id)
    ref = generate(model, ids, mask, mix, 10, eos_token_id=codec.eos_id).tolist()
    ref = [r[:r.index(codec.eos_id)] if codec.eos_id in r else r for r in ref]
    assert got == ref


def test_int8_cache_decode_equals_decoding_from_int8_rows(tiny, monkeypatch):
    """int8_cache: the same greedy tokens as a loop that keeps the cache as int8 rows (hoe.contract.kv_int8, as
    export/validate.py's reference does) and runs every step on their dequantized values; and the rounding is
    there (the float cache's values are not on the int8 grid)."""
    from hoe.contract import kv_int8
    from hoe.train.lm import forward_logits, positions
    from transformers import DynamicCache

    tmp, base_dir = tiny
    codec = ChatCodec.from_folder(base_dir)
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(tmp / "ckpt"))
    prompts = [codec.prompt_ids(p) for p in ["say hello", "what is rain today"]]
    mix = torch.tensor([[0, 0, 0.3, 0.7], [0.5, 0.5, 0, 0]])
    pre = prefill(model, prompts, codec.pad_id, router_mix=mix, int8_cache=True)
    float_pre = prefill(model, prompts, codec.pad_id, router_mix=mix)
    torch.testing.assert_close(pre.logp, float_pre.logp, rtol=0, atol=0)  # a prompt attends its own tokens exact
    keys = pre.cache.layers[0].keys.numpy()
    np.testing.assert_array_equal(keys, kv_int8.dequantize(kv_int8.quantize(keys)))
    assert not np.array_equal(float_pre.cache.layers[0].keys.numpy(), keys)
    from hoe.bench import pareto_decode

    rounded, real = [], pareto_decode.round_new_columns
    monkeypatch.setattr(pareto_decode, "round_new_columns", lambda c, steps: (rounded.append(steps), real(c, steps)))
    got = decode(model, pre, torch.arange(2), torch.ones(2), 2, 10, codec.eos_id, int8_cache=True)
    assert rounded and set(rounded) == {1}  # every decode step's new column (the tiny model's tokens may not move)

    ids, mask = left_pad(prompts, codec.pad_id)
    rows, step, ref = None, ids, [[] for _ in prompts]
    for _ in range(10):
        cache = None
        if rows is not None:
            floats = [torch.from_numpy(kv_int8.dequantize(r)) for r in rows]
            cache = DynamicCache(list(zip(floats[0::2], floats[1::2])), config=model.model.config)
        pos = positions(mask)[:, -step.shape[1]:]
        logits, cache = forward_logits(model, step, mask, pos, cache=cache, keep=1, router_mix=mix)
        floats = [t.numpy() for layer in cache.layers for t in (layer.keys, layer.values)]
        past = rows or [np.zeros((*f.shape[:2], 0, kv_int8.row_width(f.shape[3])), np.int8) for f in floats]
        rows = [kv_int8.append(r, f, step.shape[1]) for r, f in zip(past, floats)]
        step = logits[:, -1].argmax(-1, keepdim=True)
        for r, t in zip(ref, step[:, 0].tolist()):
            r.append(t)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    ref = [r[:r.index(codec.eos_id)] if codec.eos_id in r else r for r in ref]
    assert got == ref


def naive_mod(model, prompt, lams, tensors, steps, eos):
    """Full recompute each step (no cache): argmax Σ λ_e log softmax(logits_e)."""
    from hoe.train.lm import forward_logits, positions

    seq = list(prompt)
    out = []
    for _ in range(steps):
        ids = torch.tensor([seq] * 3)
        mask = torch.ones_like(ids)
        logits, _ = forward_logits(model, ids, mask, positions(mask), keep=1, router_mix=torch.eye(3),
                                   tensors=tensors)
        mixed = (torch.tensor(lams)[:, None] * torch.log_softmax(logits[:, -1].float(), -1)).sum(0)
        t = int(mixed.argmax())
        if t == eos:
            break
        out.append(t)
        seq.append(t)
    return out


def test_mod_decode_matches_naive_mixing(tiny):
    tmp, base_dir = tiny
    codec = ChatCodec.from_folder(base_dir)
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(tmp / "ckpt"))
    static = static_tensors(model)
    prompts = [codec.prompt_ids(p) for p in ["say hello", "what is rain today"]]
    pre = prefill(model, [p for p in prompts for _ in range(3)], codec.pad_id, router_mix=torch.eye(3).repeat(2, 1),
                  tensors=static)
    lams = [[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]
    index, row_of, weight = [], [], []
    for pi, lam in enumerate(lams):
        for j in range(2):
            for e in range(3):
                if lam[e] > 0:
                    index.append(j * 3 + e)
                    row_of.append(pi * 2 + j)
                    weight.append(lam[e])
    got = decode(model, select(pre, torch.tensor(index)), torch.tensor(row_of), torch.tensor(weight), 4, 8,
                 codec.eos_id, tensors=static)
    for pi, lam in enumerate(lams):
        for j in range(2):
            assert got[pi * 2 + j] == naive_mod(model, prompts[j], lam, static, 8, codec.eos_id)


def test_pareto_report(tiny):
    tmp, base_dir = tiny
    prompts = write_prompts(tmp / "heldout.jsonl")
    cfg = ParetoConfig(checkpoint=str(tmp / "ckpt"), base=str(base_dir), prompts=str(prompts), n_prompts=5,
                       grid_steps=3, max_new_tokens=8, batch_rows=16, mod_chunk=3)
    result = run(cfg, tmp / "out")
    assert (tmp / "out" / "pareto.png").is_file()
    assert json.loads((tmp / "out" / "pareto.json").read_text())["systems"].keys() == result["systems"].keys()
    systems = result["systems"]
    assert len(result["grid"]) == 10 and set(systems) >= {"hoe", "static", "mod", "experts", "base"}
    assert result["kv_cache"] == "float"  # no export: the model's own cache
    for name, sys_ in systems.items():
        pts = [p["rewards"] for p in sys_["points"]]
        assert sys_["hypervolume"] == pytest.approx(hypervolume(pts, [0, 0, 0]), abs=1e-5), name
    hoe, static, mod = systems["hoe"]["points"], systems["static"]["points"], systems["mod"]["points"]
    centre = [i for i, p in enumerate(result["grid"]) if min(p) > 0]
    assert centre and all(not hoe[i]["same_as_static"] for i in centre)
    for i, p in enumerate(result["grid"]):
        if i not in centre:
            assert hoe[i]["rewards"] == static[i]["rewards"]
        if max(p) == 1.0:  # at a vertex every system is the expert alone
            assert mod[i]["rewards"] == static[i]["rewards"]
    assert len(systems["experts"]["points"]) == 3 and len(systems["base"]["points"]) == 1
    assert len(summary_lines(result)) == 1 + len(systems) + 2 + 1  # systems, 2 comparisons, win fraction
    saved = json.loads((tmp / "out" / "pareto.json").read_text())
    assert saved["bootstrap"]["resamples"] == 1000 and set(saved["comparisons"]) == {"hoe_minus_static",
                                                                                     "hoe_minus_mod"}
    assert np.asarray(saved["systems"]["hoe"]["per_prompt_rewards"]).shape == (10, 5, 3)
    assert 0.0 <= saved["grid_wins_vs_static"] <= 1.0
    assert check_consistency(saved) == []  # the generated file agrees with its own per-prompt rewards


def test_pareto_resumes_from_decoded_batches(tiny, monkeypatch):
    import hoe.bench.pareto_eval as pe

    tmp, base_dir = tiny
    prompts = write_prompts(tmp / "heldout2.jsonl")
    cfg = ParetoConfig(checkpoint=str(tmp / "ckpt"), base=str(base_dir), prompts=str(prompts), n_prompts=4,
                       grid_steps=2, max_new_tokens=5, batch_rows=8, mod_chunk=2, work=str(tmp / "work"))
    first = run(cfg, tmp / "out2")

    def no_decoding(*args, **kwargs):
        raise AssertionError("everything should come from the resume cache")

    monkeypatch.setattr(pe, "decode", no_decoding)
    again = run(cfg, tmp / "out3")
    assert again["systems"] == first["systems"]
    cfg.max_new_tokens = 6  # another run identity: the cache is not used
    with pytest.raises(AssertionError, match="resume cache"):
        run(cfg, tmp / "out4")


def test_pareto_reuses_static_answers_when_only_routers_change(tiny, monkeypatch):
    import shutil

    import hoe.bench.pareto_eval as pe
    from safetensors.torch import load_file, save_file

    tmp, base_dir = tiny
    prompts = write_prompts(tmp / "heldout3.jsonl")
    cfg = ParetoConfig(checkpoint=str(tmp / "ckpt"), base=str(base_dir), prompts=str(prompts), n_prompts=3,
                       grid_steps=3, max_new_tokens=4, batch_rows=8, mod_chunk=3, work=str(tmp / "work3"))
    run(cfg, tmp / "o1")
    other = tmp / "ckpt_routers_changed"
    shutil.copytree(tmp / "ckpt", other)
    routers = load_file(str(other / "routers.safetensors"))
    for k, v in routers.items():
        if k.endswith(".bias"):
            v[3] += 1.0  # the interior router only
    save_file(routers, str(other / "routers.safetensors"))
    systems = []
    real_single = pe.Runner.single

    def spy(self, system, *args, **kwargs):
        systems.append(system)
        return real_single(self, system, *args, **kwargs)

    monkeypatch.setattr(pe.Runner, "single", spy)
    monkeypatch.setattr(pe, "decode", lambda *a, **k: [[] for _ in range(a[4])])
    cfg.checkpoint = str(other)
    run(cfg, tmp / "o2")
    # every system is asked, but only HoE's interior rows reach the decoder (the rest hit the cache)
    assert systems == ["base", "static", "hoe"]
    data = json.loads((tmp / "o2" / "pareto.json").read_text())
    centre = [i for i, p in enumerate(data["grid"]) if min(p) > 0][0]
    assert data["systems"]["hoe"]["points"][centre]["rewards"][2] == 1.0  # empty answers from the stub decoder
    assert data["systems"]["static"]["points"][centre]["rewards"][2] < 1.0  # cached real answers
    assert data["systems"]["mod"]["points"][centre]["rewards"][2] < 1.0  # MOD came from the cache too


@pytest.mark.parametrize("baked", [False, True])
def test_export_weights_reach_the_base_row(tiny, baked):
    """`--export`: the plain base (the `base` row) gets the export's dequantized base weights, as HoE does."""
    from hoe.bench.pareto_eval import export_weights

    tmp, base_dir = tiny
    quant = {"weights": "int8", "block_size": 16, "symmetric": True, "accuracy_level": 0}
    if baked:
        quant["experts"] = {"storage": "baked", "lora_A": 8, "router_weight": 8, "lora_B": 8,
                            "router_bias": "float", "block_size": 16, "symmetric": True}
    plain = load_base(base_dir)
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(tmp / "ckpt"))
    before = {n: p.detach().clone() for n, p in plain.named_parameters()}
    export_weights(model, plain, quant)
    lm = dict(model.model.named_parameters())
    changed = 0
    for name, p in plain.named_parameters():
        if name.endswith("proj.weight"):
            hoe_name = name.replace("proj.weight", "proj.base.weight")  # HoE wraps each adapted linear
            torch.testing.assert_close(p, lm[hoe_name], rtol=0, atol=0)  # the same grid in both rows
            changed += int(not torch.equal(p, before[name]))
    assert changed > 0
