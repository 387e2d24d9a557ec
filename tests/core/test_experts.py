import pytest
import torch
from hoe.core import names
from hoe.core.errors import CheckpointError, ConfigError, ShapeMismatchError
from hoe.core.experts import (
    LoraFactors,
    experts_from_peft,
    merged_expert,
    read_peft_adapter,
    stack_experts,
    task_arithmetic,
    task_svd,
    task_vectors,
    ties_merge,
)
from tiny_models import peft_adapter, tiny_model


def _low_rank(out, inp, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, k, generator=g, dtype=torch.float64) @ torch.randn(k, inp, generator=g,
                                                                                dtype=torch.float64)


@pytest.mark.parametrize("shape, k", [((24, 40), 3), ((64, 32), 8), ((17, 17), 1)])
def test_task_svd_recovers_low_rank_delta(shape, k):
    delta = _low_rank(*shape, k)
    errors = []
    for rank in range(1, min(shape) + 1):
        f = task_svd(delta, rank)
        approx = f.scaling * f.lora_b.double() @ f.lora_a.double()
        errors.append(((approx - delta).norm() / delta.norm()).item())
        if rank >= k:
            assert errors[-1] <= 1e-5
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:]))  # never grows with rank
    assert errors[0] > 1e-3 or k == 1


def test_task_svd_rejects_bad_rank():
    with pytest.raises(ConfigError, match="positive integer.*0"):
        task_svd(torch.eye(3), 0)


def test_stack_pads_ranks_with_zeros_exactly():
    f1 = LoraFactors(torch.randn(2, 5), torch.randn(4, 2), 0.5)
    f2 = LoraFactors(torch.randn(3, 5), torch.randn(4, 3), 2.0)
    t = stack_experts([{"m": f1}, {"m": f2}], ["m"])
    a, b, s = t[names.lora_a("m")], t[names.lora_b("m")], t[names.scaling("m")]
    assert a.shape == (2, 3, 5) and b.shape == (2, 4, 3)
    assert torch.equal(a[0, 2], torch.zeros(5)) and torch.equal(b[0, :, 2], torch.zeros(4))
    assert torch.equal(b[0] @ a[0], f1.lora_b @ f1.lora_a)
    assert s.tolist() == [0.5, 2.0]


def test_stack_rejects_mismatched_shapes():
    f1 = LoraFactors(torch.randn(2, 5), torch.randn(4, 2), 1.0)
    f2 = LoraFactors(torch.randn(2, 6), torch.randn(4, 2), 1.0)
    with pytest.raises(ShapeMismatchError, match=r"m: expert 1 has A \(2, 6\).*\[r<=2, 5\]"):
        stack_experts([{"m": f1}, {"m": f2}], ["m"])


def test_peft_reader_keeps_peft_meaning(tmp_path):
    base = tiny_model("llama")
    folder = peft_adapter(base, tmp_path / "a", seed=1, rank=4, alpha=12, target_modules=["q_proj", "down_proj"])
    expert, cfg = read_peft_adapter(folder)
    assert sorted(expert) == ["model.layers.0.mlp.down_proj", "model.layers.0.self_attn.q_proj",
                              "model.layers.1.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    f = expert["model.layers.0.self_attn.q_proj"]
    assert f.lora_a.shape == (4, 32) and f.lora_b.shape == (32, 4) and f.scaling == 3.0


def test_peft_errors(tmp_path):
    with pytest.raises(CheckpointError, match="lacks adapter_config.json"):
        read_peft_adapter(tmp_path)
    base = tiny_model("llama")
    a = peft_adapter(base, tmp_path / "a", seed=1, target_modules=["q_proj"])
    b = peft_adapter(base, tmp_path / "b", seed=2, target_modules=["v_proj"])
    with pytest.raises(ConfigError, match="adapts other modules"):
        experts_from_peft([a, b])


def test_task_vectors_from_finetuned_recover_delta():
    base = tiny_model("qwen2")
    tuned = tiny_model("qwen2")
    module = "model.layers.1.mlp.up_proj"
    delta = _low_rank(48, 32, 2, seed=5).float() * 0.01
    with torch.no_grad():
        tuned.get_submodule(module).weight.add_(delta)
    tv = task_vectors(base.state_dict(), tuned.state_dict(), [module, "model.layers.0.self_attn.q_proj"])
    assert torch.allclose(tv[module].float(), delta, atol=1e-7)
    assert tv["model.layers.0.self_attn.q_proj"].abs().max() == 0
    f = task_svd(tv[module], 2)
    assert torch.allclose(f.lora_b @ f.lora_a, delta, atol=1e-6)


def test_task_vectors_shape_mismatch_names_key():
    base = {"m.weight": torch.zeros(3, 4)}
    with pytest.raises(ShapeMismatchError, match=r"m.weight: fine-tuned shape \(4, 4\) != base \(3, 4\)"):
        task_vectors(base, {"m.weight": torch.zeros(4, 4)}, ["m"])


def test_task_arithmetic_is_weighted_sum():
    d = [torch.randn(3, 3) for _ in range(3)]
    torch.testing.assert_close(task_arithmetic(d, [0.2, 0.3, 0.5]), 0.2 * d[0] + 0.3 * d[1] + 0.5 * d[2])


def test_ties_trims_elects_sign_and_averages_agreeing():
    d1 = torch.tensor([[1.0, -2.0, 0.1, 4.0]])
    d2 = torch.tensor([[3.0, 1.0, -0.2, -1.0]])
    merged = ties_merge([d1, d2], [1.0, 1.0], density=0.5)
    # trimmed: d1 -> [0, -2, 0, 4], d2 -> [3, 1, 0, 0]; signs: +, -(−2+1), 0, +
    torch.testing.assert_close(merged, torch.tensor([[3.0, -2.0, 0.0, 4.0]]))
    with pytest.raises(ConfigError, match="density"):
        ties_merge([d1], [1.0], density=0)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_merged_expert_is_low_rank_merge(method):
    deltas = [{"m": _low_rank(10, 12, 2, seed=s)} for s in range(3)]
    expert = merged_expert(deltas, [0.5, 0.3, 0.2], rank=12, method=method)
    merged = (task_arithmetic if method == "task_arithmetic" else ties_merge)([d["m"] for d in deltas],
                                                                              [0.5, 0.3, 0.2])
    f = expert["m"]
    torch.testing.assert_close((f.lora_b @ f.lora_a).double(), merged, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="merge method"):
        merged_expert(deltas, [1, 0, 0], rank=2, method="pcb")
