"""The systems the latency benchmark times side by side, all behind one step interface.

    hoe-ort   our runtime's onnxruntime backend on the exported HoE folder, router_mix of the preference
    torch     the runtime's PyTorch backend: hoe.core's eager HoEModel, same weights, DynamicCache
    base-ort  the same base exported the same way without experts (the price of HoE's routing)
    mod       MOD as the peers serve preferences: one forward per expert model per token, separate KV
              caches, logits mixed by the preference. Each expert model is the HoE graph held at that
              expert's vertex: a copy of the export whose routers are constant one-hot routers (zero
              weights, mask = identity), so router_mix e_j gives gates exactly e_j.
    merged    Rewarded Soups: the experts merged into the base weights at the preference (merge.py)

Every system is driven by the same greedy loop (`greedy_run`): one prefill step, then one step per token.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hoe.contract.folder import Manifest
from hoe.core import names
from hoe.core.config import HoEConfig
from hoe.core.errors import ConfigError
from hoe.core.routing import simplex_lstsq, validate_preference
from hoe.runtime.backends import BackendConfig, create_backend

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One timed generation."""

    ttft_ms: float  # prefill forward + first token choice
    step_ms: list[float] = field(default_factory=list)  # each later token: one decode forward + choice
    tokens: np.ndarray | None = None  # [B, N]


class System:
    """Something that turns token steps into logits; the preference is fixed at construction."""

    name = "?"

    def new_state(self, batch: int):
        raise NotImplementedError

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        """input_ids [B,T], attention_mask [B,P+T], position_ids [B,T] -> logits of the last position [B,V]."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class BackendSystem(System):
    """A runtime backend with one router_mix row [K] for every batch row (K = 0 for a plain base graph)."""

    def __init__(self, name: str, backend, router_mix: np.ndarray) -> None:
        self.name = name
        self.backend = backend
        self.router_mix = np.asarray(router_mix, dtype=np.float32)  # [K]

    def new_state(self, batch: int):
        return self.backend.new_state(batch)

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        mix = np.ascontiguousarray(np.broadcast_to(self.router_mix, (input_ids.shape[0], self.router_mix.size)))
        return self.backend.step(state, input_ids, attention_mask, position_ids, mix)

    def close(self) -> None:
        self.backend.deactivate()


class ModSystem(System):
    """MOD: Σ_j w_j · logits_j, one forward of expert model j per token, each with its own KV cache.

    Experts with weight 0 are not run (a MOD server would not run them either).
    """

    name = "mod"

    def __init__(self, backend, weights: np.ndarray, n_routers: int) -> None:
        self.backend = backend
        self.weights = np.asarray(weights, dtype=np.float64)  # [E]
        self.members = [int(j) for j in np.flatnonzero(self.weights > 0)]
        self.one_hot = np.eye(n_routers, dtype=np.float32)  # router_mix of member j: e_j [K]

    def new_state(self, batch: int):
        return [self.backend.new_state(batch) for _ in self.members]

    def step(self, state, input_ids, attention_mask, position_ids) -> np.ndarray:
        b = input_ids.shape[0]
        out = None
        for j, member_state in zip(self.members, state):
            mix = np.ascontiguousarray(np.broadcast_to(self.one_hot[j], (b, self.one_hot.shape[1])))
            logits = self.backend.step(member_state, input_ids, attention_mask, position_ids, mix)
            out = self.weights[j] * logits if out is None else out + self.weights[j] * logits
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        self.backend.deactivate()


# ------------------------------------------------------------------------------------------ greedy loop


def greedy_run(system: System, prompt_ids: np.ndarray, new_tokens: int) -> Run:
    """Greedy generation of `new_tokens` after an unpadded prompt [B, L], every token timed.

    The same loop the runtime's Generator runs (forward of pending tokens, choose, append), minus
    text handling, so every system pays the same host-side work.
    """
    b, length = prompt_ids.shape
    mask = np.ones((b, length + new_tokens), dtype=np.int64)  # [B, L+N]
    positions = np.arange(length, dtype=np.int64)[None, :].repeat(b, 0)  # [B, L]
    tokens = np.zeros((b, new_tokens), dtype=np.int64)
    state = system.new_state(b)
    start = time.perf_counter()
    logits = system.step(state, np.ascontiguousarray(prompt_ids, dtype=np.int64), mask[:, :length], positions)
    tokens[:, 0] = logits.argmax(-1)
    run = Run(ttft_ms=(time.perf_counter() - start) * 1e3, tokens=tokens)
    for i in range(1, new_tokens):
        start = time.perf_counter()
        pos = np.full((b, 1), length + i - 1, dtype=np.int64)
        logits = system.step(state, tokens[:, i - 1:i].copy(), mask[:, :length + i], pos)
        tokens[:, i] = logits.argmax(-1)
        run.step_ms.append((time.perf_counter() - start) * 1e3)
    return run


def alternating_steps(system: System, prompts: list[np.ndarray], steps: int) -> list[list[float]]:
    """Decode ms of `steps` tokens after each prompt [1, L], the prompts' steps alternating (step i runs every
    prompt's state once, the order rotated by i) after all the prefills (untimed): each prompt's decode is timed
    in the same stretch of time as the others', whatever the machine did before."""
    from .timing import rotated

    states = []
    for prompt in prompts:
        length = prompt.shape[1]
        state = system.new_state(1)
        logits = system.step(state, np.ascontiguousarray(prompt, dtype=np.int64), np.ones((1, length), np.int64),
                             np.arange(length, dtype=np.int64)[None])
        states.append([state, length, int(logits[0].argmax())])
    times = [[] for _ in prompts]
    for i in range(steps):
        for k in rotated(list(range(len(prompts))), i):
            state, length, token = states[k]
            start = time.perf_counter()
            logits = system.step(state, np.array([[token]], np.int64), np.ones((1, length + 1), np.int64),
                                 np.array([[length]], np.int64))
            states[k][2] = int(logits[0].argmax())
            times[k].append((time.perf_counter() - start) * 1e3)
            states[k][1] += 1
    return times


# ------------------------------------------------------------------------------------------ loading


def backend_config(threads: int, name: str = "ort", **kw) -> BackendConfig:
    """Explicit threads; ORT spin-waiting off so it does not starve torch timed in the same run."""
    return BackendConfig(name=name, threads=threads, spinning=False if name == "ort" else None, **kw)


def load_backend(folder: str | Path, config: BackendConfig, verify: bool = False):
    return create_backend(Manifest.load(folder, verify=verify), config).activate()


def expert_weights(manifest: Manifest, preference) -> np.ndarray:
    """The preference as a convex mix of the experts' own preferences: w [E] (MOD's logit weights)."""
    prefs = np.asarray(manifest.hoe["expert_prefs"], dtype=np.float64)
    return simplex_lstsq(prefs, validate_preference(preference, prefs.shape[1]))


def vertex_routers(manifest: Manifest) -> dict[str, np.ndarray]:
    """Constant routers, router j < E putting all gate mass on expert j: zero weights and biases, one-hot mask.

    K stays the export's K when K >= E (graphs exported with a fixed router count still run); routers
    j >= E copy router 0 and are never mixed in.
    """
    e, k = int(manifest.hoe["n_experts"]), max(int(manifest.hoe["n_experts"]), int(manifest.hoe["n_routers"]))
    mask = np.zeros((k, e), dtype=np.float32)
    mask[np.arange(k), np.where(np.arange(k) < e, np.arange(k), 0)] = 1.0
    out = {names.ROUTER_MASK: mask}
    for group in manifest.hoe["groups"]:
        for module in group["modules"]:
            out[names.router_weight(module)] = np.zeros((k, e, int(group["d_in"])), dtype=np.float32)
            out[names.router_bias(module)] = np.zeros((k, e), dtype=np.float32)
    return out


def vertex_folder(export_dir: str | Path, work_dir: str | Path) -> Path:
    """A copy of an exported HoE folder (big files linked, not copied) whose routers are `vertex_routers`.

    Built with the exporter's own `swap_experts`, so it is a valid exported folder (manifest, hashes).
    """
    from hoe.contract.manifest import read_checkpoint_tensors, swap_experts
    from safetensors.numpy import save_file

    export_dir, work_dir = Path(export_dir), Path(work_dir)
    manifest = Manifest.load(export_dir, verify=False)
    if not manifest.hoe_enabled:
        raise ConfigError(f"{export_dir} is a plain base export; MOD needs the HoE export")
    ckpt, folder = work_dir / "mod_vertex_ckpt", work_dir / "mod_vertex_export"
    for d in (ckpt, folder):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    config = HoEConfig.load(export_dir / manifest.files["hoe"])
    routers = vertex_routers(manifest)
    anchors = [config.expert_prefs[j if j < config.n_experts else 0] for j in range(len(routers[names.ROUTER_MASK]))]
    vertex = HoEConfig(objectives=config.objectives, expert_prefs=config.expert_prefs, anchors=anchors,
                       target_modules=config.target_modules, rank=config.rank, n_active=1, n_route=1,
                       expert_names=config.expert_names, base=config.base)
    vertex.save(ckpt / "hoe.json")
    experts = {n: v for n, v in read_checkpoint_tensors(export_dir).items() if n.startswith(names.EXPERTS_PREFIX)}
    save_file(experts, str(ckpt / "experts.safetensors"))
    save_file(routers, str(ckpt / "routers.safetensors"))
    for item in export_dir.iterdir():  # swap_experts replaces links, never their targets
        if item.name == "hoe_config.json":
            shutil.copyfile(item, folder / item.name)
        elif item.is_file():
            os.symlink(item.resolve(), folder / item.name)
    swap_experts(folder, ckpt)
    return folder
