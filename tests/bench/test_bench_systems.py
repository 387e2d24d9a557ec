"""The benchmarked systems compute what they claim, against the PyTorch reference on a tiny HoE model.

MOD at a vertex = the HoE model whose gates are exactly that expert; MOD inside = the weighted sum of its
members' logits; merged at λ = the HoE model with constant gates w(λ); base-ort = the plain base model.
"""

import numpy as np
import pytest
import torch
from hoe.bench import systems
from hoe.bench.merge import Merger, locate_weights, read_base_weights, read_initializers, remerge
from hoe.contract.folder import Manifest
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.loading import hoe_from_checkpoint, load_base
from hoe.core.preference import PreferenceRouter
from hoe.core.routers import constant_routers

PROMPT = np.array([[5, 9, 3, 7, 22, 40, 11], [8, 14, 6, 12, 13, 3, 20]], dtype=np.int64)


def _constant_reference(bench_model, dist):
    """HoE reference whose gates are exactly `dist` [E] at every token (one constant router, router_mix [1])."""
    ckpt = HoECheckpoint.load(bench_model.ckpt_dir)
    base = load_base(bench_model.base_dir)
    modules = ckpt.config.target_modules
    feats = {m: base.get_submodule(m).in_features for m in modules}
    ckpt.routers = constant_routers(modules, feats, ckpt.config.expert_prefs, [ckpt.config.expert_prefs[0]], 3,
                                    distributions=[list(dist)])
    ckpt.config.anchors, ckpt.config.n_route = [ckpt.config.expert_prefs[0]], 1
    return hoe_from_checkpoint(base, ckpt)


def _last_logits(model, ids):
    t = torch.from_numpy(ids)
    with torch.no_grad():
        logits, _ = model(t, torch.ones(len(ids), 1), attention_mask=torch.ones_like(t),
                          position_ids=torch.arange(ids.shape[1]).repeat(len(ids), 1))
    return logits[:, -1].numpy()


def _prefill(system, ids=PROMPT):
    b, t = ids.shape
    return system.step(system.new_state(b), ids, np.ones((b, t), np.int64), np.arange(t)[None].repeat(b, 0))


@pytest.fixture(scope="module")
def mod_backend(bench_model, tmp_path_factory):
    folder = systems.vertex_folder(bench_model.export, tmp_path_factory.mktemp("mod"))
    manifest = Manifest.load(folder, verify=True)  # a valid exported folder: hashes refreshed
    backend = systems.load_backend(folder, systems.backend_config(1))
    yield backend, manifest
    backend.deactivate()


@pytest.mark.parametrize("expert", [0, 2])
def test_mod_member_at_a_vertex_is_that_expert_alone(bench_model, mod_backend, expert):
    backend, manifest = mod_backend
    weights = np.eye(3)[expert]
    mod = systems.ModSystem(backend, weights, len(manifest.anchors))
    assert mod.members == [expert]
    want = _last_logits(_constant_reference(bench_model, weights), PROMPT)
    np.testing.assert_allclose(_prefill(mod), want, atol=1e-5, rtol=1e-5)


def test_mod_mixes_member_logits_by_the_preference(mod_backend):
    backend, manifest = mod_backend
    k = len(manifest.anchors)
    w = systems.expert_weights(manifest, [0.2, 0.5, 0.3])
    np.testing.assert_allclose(w, [0.2, 0.5, 0.3], atol=1e-9)
    members = [_prefill(systems.ModSystem(backend, np.eye(3)[j], k)) for j in range(3)]
    mixed = _prefill(systems.ModSystem(backend, w, k))
    np.testing.assert_allclose(mixed, sum(wj * m for wj, m in zip(w, members)), atol=1e-5)


@pytest.fixture(scope="module")
def merger(bench_model):
    export = Manifest.load(bench_model.export)
    modules = export.hoe["target_modules"]
    inits = read_initializers(bench_model.base_export / "model.onnx")
    slots = locate_weights(inits, read_base_weights(bench_model.base_dir, modules))
    assert sorted(slots) == sorted(modules)
    from hoe.contract.manifest import read_checkpoint_tensors

    return Merger(inits, slots, read_checkpoint_tensors(bench_model.export), export.hoe["expert_prefs"])


def test_merged_equals_hoe_with_constant_gates(bench_model, merger):
    pref = [0.2, 0.5, 0.3]
    base_manifest = Manifest.load(bench_model.base_export)
    backend, times = remerge(merger, base_manifest, systems.backend_config(1), pref)
    assert times["merge_ms"] > 0 and times["session_ms"] > 0
    merged = systems.BackendSystem("merged", backend, np.zeros(0))
    want = _last_logits(_constant_reference(bench_model, merger.expert_weights(pref)), PROMPT)
    got = _prefill(merged)
    backend.deactivate()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert np.abs(got - _prefill_base(bench_model)).max() > 1e-3  # the experts really moved the weights


def _prefill_base(bench_model):
    backend = systems.load_backend(bench_model.base_export, systems.backend_config(1))
    try:
        return _prefill(systems.BackendSystem("base-ort", backend, np.zeros(0)))
    finally:
        backend.deactivate()


def test_base_ort_is_the_plain_base_model(bench_model):
    base = load_base(bench_model.base_dir)
    t = torch.from_numpy(PROMPT)
    with torch.no_grad():
        want = base(input_ids=t, attention_mask=torch.ones_like(t)).logits[:, -1].numpy()
    np.testing.assert_allclose(_prefill_base(bench_model), want, atol=1e-5, rtol=1e-5)


def test_greedy_run_of_hoe_ort_equals_the_reference(bench_model, reference):
    from hoe.core.generate import generate

    manifest = Manifest.load(bench_model.export)
    router = PreferenceRouter.from_manifest(manifest)
    mix = router.mix(router.rows([0.2, 0.5, 0.3], 1)[0])
    backend = systems.load_backend(bench_model.export, systems.backend_config(1))
    run = systems.greedy_run(systems.BackendSystem("hoe-ort", backend, mix), PROMPT, 12)
    backend.deactivate()
    assert run.ttft_ms > 0 and len(run.step_ms) == 11 and run.tokens.shape == (2, 12)
    t = torch.from_numpy(PROMPT)
    want = generate(reference, t, torch.ones_like(t), torch.from_numpy(np.stack([mix, mix])), 12)
    assert run.tokens.tolist() == want.tolist()
