"""ORT rollouts (our runtime, routers fed as graph inputs) against the PyTorch reference on tiny chat models.

The policy must be the same: the log-prob ORT assigns to each token it sampled equals the reference's
teacher-forced log-prob of that token (lm.answer_logprobs, the one the gradient uses), for rows routed by
different anchors in one batch, after the routers changed without re-export.
"""

import numpy as np
import pytest
import torch
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.loading import hoe_from_checkpoint, load_base
from hoe.export.onnx_export import ExportConfig, export
from hoe.train.data import ChatCodec
from hoe.train.lm import answer_logprobs
from hoe.train.rollout import OrtRollouts, TorchRollouts
from tiny_chat import tiny_chat_hoe

PROMPTS = ["say hello", "what is rain today", "name a colour"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def exported(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"rollout_{request.param}")
    base_dir, ckpt_dir = tiny_chat_hoe(tmp, arch=request.param)
    export(base_dir, ckpt_dir, tmp / "export", ExportConfig(validate=False))
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(ckpt_dir))
    return model, ChatCodec.from_folder(base_dir), OrtRollouts(tmp / "export", threads=1)


def perturb_routers(model, seed: int) -> None:
    """New non-trivial weights for the interior router (row 3), as a policy-gradient step would make."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.routers.items():
            if name.endswith("weight"):
                p[3] += torch.randn(p[3].shape, generator=gen) * 0.5
            elif name.endswith("bias"):
                p[3] += torch.randn(p[3].shape, generator=gen)


def teacher_forced(model, codec, rows, tokens, finished, mixes):
    answers = [t + ([codec.eos_id] if f else []) for t, f in zip(tokens, finished)]
    logp, mask = answer_logprobs(model, rows, answers, codec.pad_id, router_mix=torch.as_tensor(mixes))
    return [logp[i, :len(a)].detach().numpy() for i, a in enumerate(answers)]


def test_ort_rollout_logprobs_equal_teacher_forced_reference(exported):
    model, codec, ort = exported
    perturb_routers(model, seed=1)
    ort.set_routers(model.named_tensors())
    prompts = [codec.prompt_ids(p) for p in PROMPTS]
    mixes = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0.2, 0.3, 0.1, 0.4]], np.float32)  # one routing per row
    got = ort.sample(prompts, mixes, 2, 10, codec.eos_id, codec.pad_id, 1.0, 0.95, seed=3)
    assert len(got.tokens) == 6 and any(len(t) > 3 for t in got.tokens)
    ref = teacher_forced(model, codec, [p for p in prompts for _ in range(2)], got.tokens, got.finished,
                         np.repeat(mixes, 2, axis=0))
    for lp, r in zip(ort.last_logp, ref):
        np.testing.assert_allclose(lp, r, atol=2e-4)


def test_routers_are_rebound_without_reexport(exported):
    """After another router update the ORT policy follows it (and no longer matches the old one)."""
    model, codec, ort = exported
    prompts = [codec.prompt_ids(p) for p in PROMPTS]
    mixes = np.tile(np.array([[0, 0, 0, 1.0]], np.float32), (3, 1))
    ort.set_routers(model.named_tensors())
    old = ort.sample(prompts, mixes, 1, 8, codec.eos_id, codec.pad_id, 1.0, 1.0, seed=5)
    old_lp = [np.asarray(x) for x in ort.last_logp]
    perturb_routers(model, seed=2)
    ort.set_routers(model.named_tensors())
    again = ort.sample(prompts, mixes, 1, 8, codec.eos_id, codec.pad_id, 1.0, 1.0, seed=5)
    new_ref = teacher_forced(model, codec, prompts, again.tokens, again.finished, mixes)
    for lp, r in zip(ort.last_logp, new_ref):
        np.testing.assert_allclose(lp, r, atol=2e-4)
    with torch.no_grad():  # the old tokens under the new routers score differently than ORT scored them before
        stale = teacher_forced(model, codec, prompts, old.tokens, old.finished, mixes)
    assert max(np.abs(a - b).max() for a, b in zip(old_lp, stale)) > 1e-2


def test_torch_rollouts_route_each_row_by_its_own_mix(exported):
    """The reference sampler with one mix per prompt row and n > 1: a row's answers equal a run with that mix alone."""
    model, codec, _ = exported
    prompts = [codec.prompt_ids(p) for p in PROMPTS[:2]]
    mixes = np.array([[0, 0, 0, 1], [1, 0, 0, 0]], np.float32)
    torch_roll = TorchRollouts(model)
    both = torch_roll.sample(prompts, mixes, 2, 6, codec.eos_id, codec.pad_id, 0.0, 1.0, seed=0)  # greedy
    for i in range(2):
        alone = torch_roll.sample(prompts[i:i + 1], mixes[i:i + 1], 2, 6, codec.eos_id, codec.pad_id, 0.0, 1.0, 0)
        assert both.tokens[2 * i:2 * i + 2] == alone.tokens
