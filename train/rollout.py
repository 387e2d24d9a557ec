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
from hoe.core import names
from hoe.core.errors import ConfigError

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
        from hoe.contract.folder import Manifest
        from hoe.core.packing import SiteGroup
        from hoe.runtime.backends import BackendConfig, create_backend

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
        import onnxruntime as ort
        from hoe.core.packing import pack

        arrays = {k: v.detach().float().cpu().numpy() for k, v in tensors.items()
                  if k.startswith((names.EXPERTS_PREFIX, names.ROUTERS_PREFIX))}
        packed = pack(arrays, self.groups, self.dtype)
        for name in self.router_inputs:  # `infer` feeds backend.tensors; the experts stay as loaded
            self.backend.tensors[name] = ort.OrtValue.ortvalue_from_numpy(packed[name], self.backend.device, 0)

    def sample(self, prompts: list[list[int]], mixes: np.ndarray, n: int, max_new_tokens: int, eos_id: int,
               pad_id: int, temperature: float, top_p: float, seed: int) -> Samples:
        """Same contract as TorchRollouts.sample; `last_logp` keeps log π of each sampled token (EOS included)."""
        tokens, self.last_logp = self.generate(prompts, np.asarray(mixes, np.float32), n, max_new_tokens, eos_id,
                                               pad_id, temperature, top_p, seed)
        finished = [bool(t) and t[-1] == eos_id for t in tokens]
        return Samples([t[:-1] if f else t for t, f in zip(tokens, finished)], finished)

    def generate(self, prompts: list[list[int]], mixes: np.ndarray, n: int, max_new_tokens: int, eos_id: int,
                 pad_id: int, temperature: float, top_p: float, seed: int) -> tuple[list[list[int]], list[list[float]]]:
        """Sampled tokens [U·n][≤N] (EOS included) and their log-probs.

            prefill the U (prompt, mix) rows once ─► repeat logits and K/V n times (rows grouped by prompt)
            ─► decode: sample, then drop the rows that emitted EOS from the batch and the cache, step the rest

        The cache is held as numpy arrays and stepped with the backend's single-forward `infer` (experts and
        routers bound by `set_routers`), so rows can be repeated and dropped between steps.
        """
        from hoe.runtime.config import GenerationConfig
        from hoe.runtime.sampling import Sampler

        ids, mask = _left_pad(prompts, pad_id)  # [U, T0]
        kv = self._empty_cache(len(prompts))
        logits, kv = self._forward(ids, mask, np.clip(mask.cumsum(1) - 1, 0, None), mixes, kv)
        rep = np.repeat(np.arange(len(prompts)), n)  # [R]: row r continues prompt rep[r]
        logits, kv, mask, mix = logits[rep], [x[rep] for x in kv], mask[rep], mixes[rep]
        alive = np.arange(len(rep))  # original row of each live row
        sampler = Sampler(GenerationConfig(temperature=temperature, top_p=top_p, seed=seed), len(rep),
                          self.manifest.vocab_size)
        out_t, out_lp = [[] for _ in rep], [[] for _ in rep]
        for step in range(max_new_tokens):
            token = sampler(logits)  # [A]
            logp = _log_softmax(logits)[np.arange(len(token)), token]  # [A], temperature 1
            for r, t, lp in zip(alive, token, logp):
                out_t[r].append(int(t))
                out_lp[r].append(float(lp))
            keep = token != eos_id
            if step + 1 == max_new_tokens or not keep.any():
                break
            alive, token, kv, mask, mix = alive[keep], token[keep], [x[keep] for x in kv], mask[keep], mix[keep]
            mask = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)  # [A, P+1]
            logits, kv = self._forward(token[:, None], mask, mask.sum(1, keepdims=True) - 1, mix, kv)
        return out_t, out_lp

    def _empty_cache(self, batch: int) -> list[np.ndarray]:
        dtype, heads, head_dim = self.manifest.kv_spec()
        empty = np.zeros((batch, heads, 0, head_dim), dtype=np.dtype(dtype))
        return [empty] * (2 * self.manifest.num_layers)

    def _forward(self, ids, mask, positions, mix, kv) -> tuple[np.ndarray, list[np.ndarray]]:
        """One step through the graph: (logits of the last position [B, V] float32, new K/V per layer)."""
        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64),
                "position_ids": positions.astype(np.int64), "router_mix": mix}
        names_kv = [self.manifest.kv_names(i) for i in range(self.manifest.num_layers)]
        for i, (past_k, past_v, _, _) in enumerate(names_kv):
            feed[past_k], feed[past_v] = kv[2 * i], kv[2 * i + 1]
        out = self.backend.infer(feed)
        new_kv = [out[name] for _, _, pk, pv in names_kv for name in (pk, pv)]
        return out["logits"][:, -1].astype(np.float32), new_kv

    def close(self) -> None:
        self.backend.deactivate()


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (ids [B, T], mask [B, T]) int64, left-padded."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


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
