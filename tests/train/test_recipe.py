"""The recipe end to end on a tiny Llama with toy objectives (character frequencies): rewards must improve."""

import json

import numpy as np
import pytest
import torch
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.errors import ConfigError
from hoe.core.loading import load_base, load_hoe
from hoe.core.objectives import make_objectives, score_all
from hoe.core.routing import route
from hoe.train.config import ExpertConfig, RecipeConfig, RouterConfig, SampleConfig
from hoe.train.data import ChatCodec
from hoe.train.recipe import train_experts, train_routers
from hoe.train.sampling import sample
from tiny_chat import tiny_chat_model, write_prompts

OBJECTIVES = ["char:a", "char:e"]


def tiny_recipe(tmp_path, **router):
    base = tiny_chat_model(tmp_path / "base")
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    return RecipeConfig(
        base=str(base), objectives=OBJECTIVES, train_prompts=str(prompts), n_prompts=10, seed=0, threads=1,
        sample=SampleConfig(n_samples=8, temperature=1.0, top_p=1.0, max_new_tokens=12, batch_prompts=4),
        expert=ExpertConfig(rank=4, alpha=8.0, lr=2e-2, epochs=8, batch_size=5),
        router=RouterConfig(steps=3, prompts_per_step=4, group_size=3, max_new_tokens=8, grad_rows=5, **router))


def mean_rewards(model, codec, prompts, objectives, router_mix=None, seed=123):
    got = sample(model, [codec.prompt_ids(p) for p in prompts], 4, 12, codec.eos_id, codec.pad_id, 1.0, 1.0,
                 seed=seed, router_mix=router_mix)
    texts = [codec.decode(t) for t in got.tokens]
    return score_all(objectives, [p for p in prompts for _ in range(4)], texts).mean(0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recipe")
    cfg = tiny_recipe(tmp)
    ckpt = train_experts(cfg, tmp / "work")
    out = train_routers(cfg, tmp / "work", tmp / "out")
    return cfg, tmp, ckpt, out


def test_experts_raise_their_own_reward(trained):
    cfg, tmp, ckpt_dir, _ = trained
    codec = ChatCodec.from_folder(cfg.base)
    objectives = make_objectives(OBJECTIVES)
    prompts = [json.loads(x)["prompt"] for x in open(cfg.train_prompts)]
    base_r = mean_rewards(load_base(cfg.base), codec, prompts, objectives)
    model = load_hoe(cfg.base, ckpt_dir)
    for i in range(len(OBJECTIVES)):
        mix = torch.tensor(route(np.eye(2)[i], model.config.anchors)[None], dtype=torch.float32)
        expert_r = mean_rewards(model, codec, prompts, objectives, router_mix=mix)
        assert expert_r[i] > 1.5 * base_r[i] + 0.01, (i, base_r, expert_r)


def test_checkpoint_and_card(trained):
    cfg, tmp, _, out = trained
    ckpt = HoECheckpoint.load(out)
    base = load_base(cfg.base)
    ckpt.validate(base)
    assert ckpt.config.anchors == [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]]
    w = next(v for k, v in ckpt.routers.items() if k.endswith(".weight"))
    assert w.dtype == torch.float16 and ckpt.routers["routers.mask"].dtype == torch.float32
    # vertex routers stay constant (zero weights), the trained anchor's router moved
    weights = [v for k, v in ckpt.routers.items() if k.endswith(".weight")]
    assert all(float(v[:2].abs().max()) == 0.0 for v in weights)
    assert max(float(v[2].abs().max()) for v in weights) > 0
    for name in ("MODEL_CARD.md", "training_curves.png", "training.json"):
        assert (out / name).is_file()
    summary = json.loads((out / "training.json").read_text())
    assert summary["routers"]["anchor:0"]["steps"] == 3 and summary["routers"]["anchor:0"]["anchor"] == [0.5, 0.5]
    assert summary["rollout"]["backend"] == "ort" and summary["rollout"]["tokens_per_s_median"] > 0
    state = json.loads((tmp / "work" / "state.json").read_text())["done"]
    assert state == ["sample", "score", "expert:char:a", "expert:char:e", "assemble", "rollout_export", "routers"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "| [0.500, 0.500] |" in card and "leave-one-out" in card and "onnxruntime" in card


def test_resume_skips_finished_stages_and_refuses_other_recipe(trained):
    cfg, tmp, _, _ = trained
    before = (tmp / "work" / "log.jsonl").read_text()
    train_experts(cfg, tmp / "work")  # every stage is done: nothing runs, nothing is logged
    assert (tmp / "work" / "log.jsonl").read_text() == before
    other = RecipeConfig.from_dict({**cfg.to_dict(), "seed": 1})
    with pytest.raises(ConfigError, match="another recipe"):
        train_experts(other, tmp / "work")


def _without_timing(records):
    timing = ("seconds", "cpu_seconds", "rollout_tokens_per_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in records]


def test_router_stage_resumes_mid_stage_on_a_fresh_machine(trained, tmp_path, monkeypatch):
    """Killed during step 3 (after step 2 was saved), then resumed in another folder holding only
    resume_files (no samples, adapters, nor the ORT export): same routers and log as the uninterrupted run."""
    import shutil

    import hoe.train.routers as routers_mod
    from hoe.train.state import RunState, resume_files

    cfg, tmp, _, full = trained
    full_log = _without_timing(RunState(tmp / "work", cfg).records("routers"))
    work2 = tmp_path / "work2"
    shutil.copytree(tmp / "work", work2, ignore=shutil.ignore_patterns("routers"))
    state = json.loads((work2 / "state.json").read_text())
    (work2 / "state.json").write_text(json.dumps({"done": [s for s in state["done"] if s != "routers"]}))
    real_step, calls = routers_mod.pg_step, []

    def interrupted(*args, **kwargs):  # dies during the third step
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(routers_mod, "pg_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_routers(cfg, work2, tmp_path / "resumed")
    monkeypatch.setattr(routers_mod, "pg_step", real_step)
    with open(work2 / "log.jsonl", "a") as f:
        f.write('{"stage": "routers", "st')  # and the kill cut a log line in half
    carry = resume_files(RunState(work2, cfg))
    assert "routers" in carry and "experts_ckpt" in carry and "rollout_export" not in carry
    assert "samples.jsonl" not in carry and not any(c.startswith("adapters") for c in carry)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in carry:
        (shutil.copytree if (work2 / name).is_dir() else shutil.copy2)(work2 / name, fresh / name)
    out = train_routers(cfg, fresh, tmp_path / "resumed")
    a, b = HoECheckpoint.load(full).routers, HoECheckpoint.load(out).routers
    assert all(torch.equal(a[k], b[k]) for k in a)
    log2 = _without_timing(RunState(fresh, cfg).records("routers"))
    assert [r["step"] for r in log2] == [0, 1, 2] and log2 == full_log


def test_router_training_raises_the_worst_off_reward(tmp_path, trained):
    """Tchebycheff training moves: at anchor [0.5, 0.5] the trained router's worst-off objective (fresh samples,
    seeds unseen in training) beats static mixing's clearly (measured: 0.0185 -> 0.048). Uses the PyTorch
    rollout backend (the reference; no export is made)."""
    import shutil

    cfg, tmp, ckpt_dir, _ = trained
    router = {**cfg.router.to_dict(), "rollout": "torch", "steps": 40, "prompts_per_step": 4, "group_size": 4,
              "lr_weight": 3e-3, "lr_bias": 3e-2}
    cfg = RecipeConfig.from_dict({**cfg.to_dict(), "router": router})
    work = tmp_path / "work"
    work.mkdir()
    for name in ("experts_ckpt", "rewards.json"):
        (shutil.copytree if (tmp / "work" / name).is_dir() else shutil.copy2)(tmp / "work" / name, work / name)
    (work / "state.json").write_text(json.dumps({"done": ["sample", "score", "expert:char:a", "expert:char:e",
                                                          "assemble"]}))
    out = train_routers(cfg, work, tmp_path / "out")
    assert not (work / "rollout_export").exists()
    summary = json.loads((out / "training.json").read_text())
    assert summary["rollout"]["backend"] == "torch" and summary["routers"]["anchor:0"]["steps"] == 40
    codec = ChatCodec.from_folder(cfg.base)
    objectives = make_objectives(OBJECTIVES)
    prompts = [json.loads(x)["prompt"] for x in open(cfg.train_prompts)]

    def worst_off(folder, mix):
        model = load_hoe(cfg.base, folder)
        return min(np.mean([mean_rewards(model, codec, prompts, objectives, torch.tensor([mix]), seed=s)
                            for s in range(5)], 0))

    static = worst_off(ckpt_dir, [0.5, 0.5])  # vertex routers only: g = λ
    assert worst_off(out, [0.0, 0.0, 1.0]) > 1.5 * static + 0.005, static


def test_routers_start_from_a_trained_checkpoint(trained, tmp_path):
    """`hoe train routers --experts-from OUT`: the experts and ideal point of a checkpoint this recipe wrote,
    in fp32 whatever the checkpoint stores; a checkpoint of another recipe is refused."""
    from hoe.train.recipe import EXPERTS_CKPT, seed_experts
    from hoe.train.state import RunState

    cfg, tmp, _, out = trained
    ckpt = seed_experts(cfg, tmp_path / "work", out)
    run = RunState(tmp_path / "work", cfg)
    assert ckpt == run.work / EXPERTS_CKPT and run.is_done("assemble") and run.is_done("expert:char:e")
    seeded, stored = HoECheckpoint.load(ckpt), HoECheckpoint.load(out)
    assert all(v.dtype == torch.float32 for v in seeded.experts.values())
    assert all(torch.equal(seeded.experts[k], stored.experts[k].float()) for k in stored.experts)
    best = json.loads((out / "training.json").read_text())["best_of_n"]
    assert json.loads((run.work / "rewards.json").read_text()) == best
    other = RecipeConfig.from_dict({**cfg.to_dict(), "seed": 1})
    with pytest.raises(ConfigError, match=r"another recipe \(fields \['seed'\] differ\)"):
        seed_experts(other, tmp_path / "work2", out)
    with pytest.raises(ConfigError, match="expected a checkpoint written by `hoe train`"):
        seed_experts(cfg, tmp_path / "work3", tmp / "work" / EXPERTS_CKPT)
