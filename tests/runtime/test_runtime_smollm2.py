"""SmolLM2-135M-Instruct with three rank-16 experts and random routers: the runtime's greedy tokens equal
the PyTorch reference's (slow: real model, still runs in CI)."""

import hoe.runtime as hr
import pytest
import torch
from hoe.core.generate import generate as reference_generate
from hoe.core.routing import route_batch

pytestmark = pytest.mark.slow

PREFS = [[1.0, 0.0, 0.0], [0.2, 0.5, 0.3], [0.0, 0.3, 0.7]]
PROMPTS = ["What is the capital of France?", "Write one sentence about rain.", "List three colours."]
N_NEW = 32


@pytest.fixture(scope="module")
def reference(smollm2_base, smollm2_hoe_ckpt):
    from hoe.core.loading import load_hoe

    return load_hoe(smollm2_base, smollm2_hoe_ckpt)


def _reference(ref, model, prompt_ids, prefs):
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), model.manifest.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompt_ids):
        ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
    mix = torch.from_numpy(route_batch(prefs, model.router.anchors, model.router.n_route))
    return reference_generate(ref, ids, mask, mix, N_NEW).tolist()


def test_smollm2_greedy_equals_pytorch(smollm2_export, reference):
    folder = smollm2_export[0]
    cfg = hr.GenerationConfig(max_new_tokens=N_NEW, ignore_eos=True)
    with hr.load(folder, threads=2) as model:
        ids = [model.encode(p, chat=True) for p in PROMPTS]
        for pref in PREFS:  # batch 1, three preferences
            [res] = model.generate([ids[0]], pref, cfg)
            assert res.token_ids == _reference(reference, model, [ids[0]], [pref])[0], pref
        results = model.generate(ids, PREFS, cfg)  # batch 3, one preference per row, left padding
        assert [r.token_ids for r in results] == _reference(reference, model, ids, PREFS)
        assert all(r.text for r in results)
