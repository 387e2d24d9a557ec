"""`hoe export --kv-cache int8` in the runtime: the shared int8 buffer (rows of D int8 and their scale) bound as
past and present, grown past its first 256 columns, gives the tokens and logits of the same graph fed its own
presents step by step (no shared buffer), per-row preferences and a mid-generation switch included. Parity with
PyTorch is tests/export/test_attention_kernel.py."""

import hoe.runtime as hr
import numpy as np
import pytest
from hoe.contract import kv_int8
from hoe.contract.parity import FeedRunner
from hoe.core.positions import positions_from_mask
from hoe.runtime import kernels

pytestmark = pytest.mark.skipif(kernels.library() is None, reason="hoe was installed without its kernels library")

PROMPTS = [[5, 9, 3, 7, 22, 40, 8, 2], [11, 4, 17]]  # row 1 left padded by 5
PREFS = [[1.0, 0.0, 0.0], [0.1, 0.3, 0.6]]
N_LONG = 300


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request, tmp_path_factory):
    from runtime_export import exported_folder
    from tiny_models import tiny_hoe

    root = tmp_path_factory.mktemp(f"int8_cache_{request.param}")
    base, ckpt = tiny_hoe(request.param, root, context=512)
    base.save_pretrained(root / "base")
    ckpt.save(root / "hoe")
    folder = exported_folder(root / "base", root / "hoe", root / "out", attention_kernel=True, kv_cache="int8")
    with hr.load(folder, threads=1) as m:
        yield m


def _stepwise(model, tokens: list[list[int]], mixes: list[np.ndarray]) -> list[list[int]]:
    """The graph through FeedRunner (past -> present arrays, nothing shared), fed the prompt then `tokens`;
    mixes[i]: router_mix of step i. -> its greedy choice at every step, per row."""
    m = model.manifest
    runner = FeedRunner(model.backend.infer, [m.kv_names(i) for i in range(m.num_layers)], m.kv_spec())
    width = max(len(p) for p in PROMPTS)
    ids = np.full((2, width), m.pad_token_id, np.int64)
    mask = np.zeros((2, width), np.int64)
    for r, p in enumerate(PROMPTS):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    runner.reset(2)
    chosen = []
    for step in range(len(tokens[0])):
        out = runner.run(ids, mask, positions_from_mask(mask, ids.shape[1]), mixes[step])
        chosen.append(out["logits"][:, -1].argmax(-1).tolist())
        assert out["present.0.key"].dtype == np.int8
        assert out["present.0.key"].shape[-1] == kv_int8.row_width(m.data["architecture"]["head_dim"])
        ids = np.array([[t[step]] for t in tokens], np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    return [list(c) for c in zip(*chosen)]


def test_int8_export_declares_its_cache(model):
    kv = model.manifest.data["kv_cache"]
    assert kv["dtype"] == "int8" and kv["shared_buffer"] and kv["kernel"] == kernels.ATTENTION_KERNEL
    dtype, _, width = model.manifest.kv_spec()
    assert dtype == "int8" and width == model.manifest.data["architecture"]["head_dim"] + 4
    assert model.manifest.outputs["logits"]["dtype"] == "float32"


def test_300_tokens_equal_the_graph_fed_step_by_step(model):
    """Greedy batch 2 in the runtime (the shared buffer grows 256 -> 512 columns) vs the same graph on arrays."""
    got = model.generate(PROMPTS, PREFS, hr.GenerationConfig(max_new_tokens=N_LONG, ignore_eos=True))
    tokens = [r.token_ids for r in got]
    assert [len(t) for t in tokens] == [N_LONG, N_LONG] and tokens[0] != tokens[1]
    mix = model.router.route(PREFS, 2)[1]
    assert _stepwise(model, tokens, [mix] * N_LONG) == tokens


def test_mid_generation_switch_equals_the_graph_fed_step_by_step(model):
    """Row 0 switches at step 15, both rows at step 25: the router_mix of every step, fed to the graph on arrays."""
    gen = model.generator(PREFS, hr.GenerationConfig(max_new_tokens=40, ignore_eos=True))
    gen.append_tokens(PROMPTS)
    rows, mixes = [list(p) for p in PREFS], []
    for step in range(40):
        if step == 15:
            gen.set_preference([0.0, 0.0, 1.0], rows=[0])
            rows[0] = [0.0, 0.0, 1.0]
        if step == 25:
            gen.set_preference([1.0, 0.0, 0.0])
            rows = [[1.0, 0.0, 0.0]] * 2
        mixes.append(model.router.route(rows, 2)[1])
        gen.generate_next_token()
    tokens = [gen.get_sequence(r) for r in range(2)]
    assert _stepwise(model, tokens, mixes) == tokens
