"""PyTorch reference backend (`--backend torch`): hoe.core's HoEModel behind the same interface.

Needs the export extra (torch, transformers). The exported folder does not hold the base weights in
torch form, so the base comes from `BackendConfig.base`, else the manifest's `source.base`. Experts and
routers come from `BackendConfig.hoe`, else the exported folder itself (its hoe.json and its packed
experts/routers, unpacked: the same model with the expert scaling folded into lora_B), else `source.hoe`.
An export with an int8 KV cache (`kv_cache.dtype`) keeps its rows here too: the model runs on the dequantized
past and its new columns are quantized as the graph's op does (hoe.contract.kv_int8).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from hoe.contract import kv_int8
from hoe.contract.kv_int8 import as_float
from hoe.contract.manifest import MANIFEST_FILE
from hoe.core.errors import BackendError

from .base import Backend, DecodeState

log = logging.getLogger(__name__)


class TorchState(DecodeState):
    def __init__(self, batch: int) -> None:
        super().__init__(batch)
        self.cache = None  # transformers DynamicCache, created by the first step; an int8-cache export's: its rows
        # by past input name (hoe.contract.kv_int8)


class TorchBackend(Backend):
    name = "torch"

    def _activate(self) -> None:
        try:
            import torch
            from hoe.core.loading import load_hoe
        except ImportError as e:
            raise BackendError(f"the torch backend needs the export extra (pip install 'hoe[export]'): {e}") from e
        self._torch = torch
        if self.config.threads:
            torch.set_num_threads(int(self.config.threads))
        base, ckpt = self._sources()
        start = time.perf_counter()
        dtype = self.manifest.data["model"].get("dtype", "fp32")
        experts = _export_checkpoint(ckpt) if (ckpt / MANIFEST_FILE).is_file() else ckpt
        self.model = load_hoe(base, experts, dtype=dtype)
        self.load_ms = (time.perf_counter() - start) * 1e3
        self._layers = [self.manifest.kv_names(i) for i in range(self.manifest.num_layers)]
        self._int8_cache = kv_int8.in_manifest(self.manifest.data)
        log.info("torch %s reference model ready in %.0f ms (base %s, experts %s, threads=%s)",
                 torch.__version__, self.load_ms, base, ckpt, torch.get_num_threads())

    def _sources(self) -> tuple[Path, Path]:
        source = self.manifest.source
        base = self.config.base or source.get("base")
        if not base:
            raise BackendError("the torch backend needs the Hugging Face base model folder: pass base= (--base); "
                               "this export does not record source.base")
        if self.config.hoe:
            ckpt = self.config.hoe
        elif self.manifest.path("hoe") is not None and self.manifest.path("hoe").is_file():
            ckpt = self.manifest.folder
        else:
            ckpt = source.get("hoe")
        if not ckpt:
            raise BackendError("the torch backend needs a HoE checkpoint folder: pass hoe= (--hoe)")
        base, ckpt = Path(base), Path(ckpt)
        if not base.is_absolute() and not base.exists():
            base = self.manifest.folder / base
        return base, Path(ckpt)

    def _deactivate(self) -> None:
        self.model = None

    def _run(self, input_ids, attention_mask, position_ids, router_mix, cache):
        t = self._torch
        with t.inference_mode():
            return self.model(t.from_numpy(np.ascontiguousarray(input_ids)), t.from_numpy(router_mix.copy()),
                              attention_mask=t.from_numpy(np.ascontiguousarray(attention_mask)),
                              position_ids=t.from_numpy(np.ascontiguousarray(position_ids)), cache=cache)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._require_active()
        from transformers import DynamicCache

        pasts = [(feed.get(k), feed.get(v)) for k, v, _, _ in self._layers]
        cache = None
        if all(k is not None and v is not None for k, v in pasts) and pasts[0][0].shape[2] > 0:
            t = self._torch
            cache = DynamicCache([(t.from_numpy(as_float(k).copy()), t.from_numpy(as_float(v).copy()))
                                  for k, v in pasts], config=self.model.model.config)
        logits, cache = self._run(feed["input_ids"], feed["attention_mask"], feed["position_ids"],
                                  feed["router_mix"], cache)
        out = {"logits": logits.float().numpy()}
        steps = feed["input_ids"].shape[1]
        for layer, (past_k, past_v), (_, _, pk, pv) in zip(cache.layers, pasts, self._layers):
            out[pk], out[pv] = layer.keys.numpy(), layer.values.numpy()
            if self._int8_cache:  # new rows quantized onto the past's (hoe.contract.kv_int8)
                out[pk], out[pv] = kv_int8.append(past_k, out[pk], steps), kv_int8.append(past_v, out[pv], steps)
        return out

    def _empty_rows(self, batch: int) -> dict[str, np.ndarray]:
        _, heads, width = self.manifest.kv_spec()
        empty = np.zeros((batch, heads, 0, width), np.int8)
        return {name: empty for k, v, _, _ in self._layers for name in (k, v)}

    def new_state(self, batch: int) -> TorchState:
        self._require_active()
        return TorchState(batch)

    def step(self, state: TorchState, input_ids, attention_mask, position_ids, router_mix) -> np.ndarray:
        if self._int8_cache:  # the export's own rounding of its past
            out = self.infer({"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                              "router_mix": router_mix, **(state.cache or self._empty_rows(state.batch))})
            state.cache = {past: out[present] for k, v, pk, pv in self._layers for past, present in ((k, pk), (v, pv))}
            state.past_length += input_ids.shape[1]
            return out["logits"][:, -1]
        logits, state.cache = self._run(input_ids, attention_mask, position_ids, router_mix, state.cache)
        state.past_length += input_ids.shape[1]
        return logits[:, -1].float().numpy()  # [B, V]

    def describe(self) -> dict:
        torch = getattr(self, "_torch", None)
        return {"backend": self.name, "providers": ["torch-cpu"], "threads": torch.get_num_threads() if torch else None,
                "torch": getattr(torch, "__version__", None)}


def _export_checkpoint(folder: Path):
    """The HoE checkpoint an exported folder holds (its packed experts/routers, unpacked)."""
    import torch
    from hoe.contract.manifest import HOE_FILE, read_checkpoint_tensors
    from hoe.core.checkpoint import HoECheckpoint
    from hoe.core.config import HoEConfig

    tensors = {n: torch.from_numpy(v) for n, v in read_checkpoint_tensors(folder).items()}
    experts = {n: v for n, v in tensors.items() if n.startswith("experts.")}
    routers = {n: v for n, v in tensors.items() if n.startswith("routers.")}
    return HoECheckpoint(HoEConfig.load(folder / HOE_FILE), experts, routers)
