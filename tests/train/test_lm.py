"""Teacher-forced log-probs with the prompt shared by a group of answers equal the per-row reference, gradients too."""

import pytest
import torch
from hoe.core.checkpoint import HoECheckpoint
from hoe.core.loading import hoe_from_checkpoint, load_base
from hoe.train.data import ChatCodec
from hoe.train.lm import answer_logprobs, grouped_answer_logprobs
from hoe.train.routers import router_params
from tiny_chat import tiny_chat_hoe


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_grouped_logprobs_and_gradients_equal_per_row(tmp_path, arch):
    base_dir, ckpt_dir = tiny_chat_hoe(tmp_path, arch=arch)  # random experts, random interior router
    model = hoe_from_checkpoint(load_base(base_dir), HoECheckpoint.load(ckpt_dir))
    codec = ChatCodec.from_folder(base_dir)
    prompts = [codec.prompt_ids(p) for p in ["say hello", "what is rain today"]]
    answers = [[5, 6, 7], [8], [9, 10, 11, 12, 1], [13, 14]]  # 2 per prompt, ragged, one ends with EOS
    mix = torch.tensor([[0, 0, 0, 1.0], [0.3, 0.2, 0.1, 0.4]])  # one routing per prompt
    weight = torch.linspace(-1, 1, 4)[:, None]
    params = list(router_params(model).values())
    for p in params:
        p.requires_grad_(True)

    def run(fn):
        for p in params:
            p.grad = None
        logp, mask = fn()
        (weight * logp).sum().backward()
        return logp.detach(), mask, [p.grad.clone() for p in params]

    ref = run(lambda: answer_logprobs(model, [p for p in prompts for _ in range(2)], answers, codec.pad_id,
                                      router_mix=mix.repeat_interleave(2, dim=0)))
    got = run(lambda: grouped_answer_logprobs(model, prompts, answers, 2, codec.pad_id, router_mix=mix))
    assert torch.equal(ref[1], got[1])
    torch.testing.assert_close(got[0], ref[0], atol=1e-5, rtol=1e-5)
    assert max(float(g.abs().max()) for g in ref[2]) > 1e-4  # the routers do get a gradient
    for a, b in zip(got[2], ref[2]):  # float32 sums in another order: tolerance scaled to the gradient's size
        torch.testing.assert_close(a, b, atol=max(1e-5, 1e-3 * float(b.abs().max())), rtol=1e-4)
    with pytest.raises(ValueError, match="2 answers per prompt"):
        grouped_answer_logprobs(model, prompts, answers[:3], 2, codec.pad_id, router_mix=mix)
