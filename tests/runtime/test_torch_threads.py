"""The torch backend serves several threads at once (runtime/model.py promises it): 4 threads with 4 different
preferences give exactly what the same requests give one after another (HoEModel keeps no per-call state)."""

import threading

import hoe.runtime as hr
import numpy as np
import torch
from hoe.core.routing import route

PREFS = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.2, 0.5, 0.3]]
PROMPTS = [[5, 9, 3, 7, 22, 40], [11, 4, 8], [8, 14, 6, 12], [3, 20, 50, 61, 2]]
CONFIG = hr.GenerationConfig(max_new_tokens=24, ignore_eos=True)


def _threaded(fn, n: int, rounds: int = 3) -> list:
    results = [None] * n
    barrier = threading.Barrier(n)

    def work(i):
        barrier.wait()
        results[i] = [fn(i) for _ in range(rounds)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_torch_backend_threads_equal_serial(llama_export):
    torch.set_num_threads(1)
    with hr.load(llama_export.folder, backend="torch", threads=1) as model:
        serial = [model.generate([PROMPTS[i]], PREFS[i], CONFIG)[0].token_ids for i in range(4)]
        assert len({tuple(s) for s in serial}) == 4  # the preferences really change the tokens
        threaded = _threaded(lambda i: model.generate([PROMPTS[i]], PREFS[i], CONFIG)[0].token_ids, 4)
    for i in range(4):
        assert threaded[i] == [serial[i]] * 3, f"thread {i} ({PREFS[i]})"


def test_hoe_model_forward_threads_equal_serial(llama_export):
    """The reference module itself, logits compared exactly: 4 threads, 4 router mixes, 3 rounds each."""
    model = llama_export.reference
    anchors = np.asarray(llama_export.reference.config.anchors)
    ids = torch.tensor([PROMPTS[0] * 4])
    mixes = [torch.from_numpy(np.asarray([route(p, anchors, 3)], dtype=np.float32)) for p in PREFS]  # [1, K]

    def forward(i):
        with torch.inference_mode():
            return model(ids, mixes[i])[0]

    serial = [forward(i) for i in range(4)]
    threaded = _threaded(forward, 4)
    for i in range(4):
        for got in threaded[i]:
            assert torch.equal(got, serial[i]), f"thread {i}"
