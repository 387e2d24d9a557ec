"""Rollouts for router training: sampled answers of many (prompt, anchor) rows at once, one router_mix per row.

    TorchRollouts  the PyTorch reference (sampling.py through the HoEModel; its router parameters are live)
    OrtRollouts    our onnxruntime runtime on an export of the same model (hoe.runtime backend "ort"):
                   routers are graph inputs, so `set_routers` packs the current router tensors into the graph's
                   layout (hoe.core.packing) and rebinds them: no re-export between policy-gradient steps

Both sample with temperature and top-p (the runtime's numpy sampler for ORT, torch's for the reference), so
the two draw different tokens for one seed; what must agree is the policy: `OrtRollouts` also returns
log π(a_t | s_t) of every sampled token (temperature 1, before top-p), which tests/train/test_rollout.py
compares with the PyTorch reference's teacher-forced log-probs (lm.answer_logprobs). The gradient is always
taken on the PyTorch reference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from .. import names
from ..errors import ConfigError
from .sampling import Samples, sample

log = logging.getLogger(__name__)


class TorchRollouts:
    """Sampling through the PyTorch HoEModel (before: the only way)."""

    name = "torch"

    def __init__(self, model) -> None:
        self.model = model

    def set_routers(self, tensors: dict[str, torch.Tensor]) -> None:
        """Nothing to do: the model samples with its own (live) router parameters."""

    def sample(self, prompts: list[list[int]], mixes: np.ndarray, n: int, max_new_tokens: int, eos_id: int,
               pad_id: int, temperature: float, top_p: float, seed: int) -> Samples:
        """prompts [B], mixes [B, K] -> n answers per row (rows grouped: row 0's n answers first)."""
        mix = torch.as_tensor(np.asarray(mixes, np.float32))
        return sample(self.model, prompts, n, max_new_tokens, eos_id, pad_id, temperature, top_p, seed=seed,
                      router_mix=mix)


class OrtRollouts:
    """Sampling with the onnxruntime runtime on an exported folder of the model being trained."""

    name = "ort"

    def __init__(self, folder: str | Path, threads: int = 1) -> None:
        from hoe.runtime.backends import BackendConfig, create_backend
        from hoe.runtime.manifest import Manifest

        from ..packing import SiteGroup

        self.manifest = Manifest.load(folder, verify=True)
        if not self.manifest.hoe_enabled:
            raise ConfigError(f"{folder} is a plain base export; router rollouts need a HoE export")
        self.backend = create_backend(self.manifest, BackendConfig(name="ort", threads=threads, spinning=False))
        self.backend.activate()
        self.groups = [SiteGroup.from_dict(g) for g in self.manifest.hoe["groups"]]
        self.router_inputs = list(self.manifest.hoe["router_inputs"])
        self.dtype = np.dtype(self.manifest.inputs[self.router_inputs[0]]["dtype"])

    def set_routers(self, tensors: dict[str, torch.Tensor]) -> None:
        """Current checkpoint tensors (canonical names, experts + routers) -> the graph's router inputs."""
        from ..packing import pack

        arrays = {k: v.detach().float().cpu().numpy() for k, v in tensors.items()
                  if k.startswith((names.EXPERTS_PREFIX, names.ROUTERS_PREFIX))}
        packed = pack(arrays, self.groups, self.dtype)
        ort = self.backend._ort
        for name in self.router_inputs:  # new states bind these; the experts stay as loaded
            self.backend.tensors[name] = ort.OrtValue.ortvalue_from_numpy(packed[name], self.backend.device, 0)

    def sample(self, prompts: list[list[int]], mixes: np.ndarray, n: int, max_new_tokens: int, eos_id: int,
               pad_id: int, temperature: float, top_p: float, seed: int) -> Samples:
        """Same contract as TorchRollouts.sample; `last_logp` keeps log π of each sampled token."""
        rows = [p for p in prompts for _ in range(n)]
        mix = np.repeat(np.asarray(mixes, np.float32), n, axis=0)  # [R, K]
        tokens, logp = self.generate(rows, mix, max_new_tokens, eos_id, pad_id, temperature, top_p, seed)
        answers, finished = [], []
        self.last_logp = []
        for row, lp in zip(tokens, logp):
            done = eos_id in row
            cut = row.index(eos_id) if done else len(row)
            answers.append(row[:cut])
            finished.append(done)
            self.last_logp.append(lp[:cut + 1] if done else lp)  # the EOS token's log-prob too
        return Samples(answers, finished)

    def generate(self, rows: list[list[int]], mix: np.ndarray, max_new_tokens: int, eos_id: int, pad_id: int,
                 temperature: float, top_p: float, seed: int) -> tuple[list[list[int]], list[list[float]]]:
        """Sampled tokens [R][≤N] (EOS included) and their log-probs, through the KV cache of the backend."""
        from hoe.runtime.config import GenerationConfig
        from hoe.runtime.sampling import Sampler

        b, width = len(rows), max(len(r) for r in rows)
        ids = np.full((b, width), pad_id, dtype=np.int64)  # [R, T0] left-padded
        mask = np.zeros((b, width + max_new_tokens), dtype=np.int64)  # [R, T0 + N]
        for r, p in enumerate(rows):
            ids[r, width - len(p):] = p
            mask[r, width - len(p):width] = 1
        positions = np.clip(mask[:, :width].cumsum(1) - 1, 0, None)  # [R, T0]
        sampler = Sampler(GenerationConfig(temperature=temperature, top_p=top_p, seed=seed, max_new_tokens=1),
                          b, self.manifest.vocab_size)
        state, pending, cols = self.backend.new_state(b), ids, 0
        done = np.zeros(b, dtype=bool)
        out_t, out_lp = [[] for _ in range(b)], [[] for _ in range(b)]
        for _ in range(max_new_tokens):
            t = pending.shape[1]
            logits = self.backend.step(state, pending, np.ascontiguousarray(mask[:, :cols + t]), positions, mix)
            cols += t
            token = sampler(logits)  # [R]
            logp = _log_softmax(logits)[np.arange(b), token]  # [R] log π at temperature 1
            for r in np.flatnonzero(~done):
                out_t[r].append(int(token[r]))
                out_lp[r].append(float(logp[r]))
            done |= token == eos_id
            if done.all():
                break
            token[done] = pad_id
            pending = token[:, None]
            positions = (mask[:, :cols].sum(1) - 0)[:, None]  # [R, 1] next real position (pad rows: harmless)
            mask[:, cols] = 1
        return out_t, out_lp

    def close(self) -> None:
        self.backend.deactivate()


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def make_rollouts(kind: str, model, export_dir: Path | None, threads: int):
    if kind == "torch":
        return TorchRollouts(model)
    if kind == "ort":
        if export_dir is None:
            raise ConfigError("ORT rollouts need an exported folder of the model")
        return OrtRollouts(export_dir, threads)
    raise ConfigError(f"rollout backend must be 'ort' or 'torch', got {kind!r}")
